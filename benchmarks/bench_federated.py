"""Federated EM: what exact secure sums cost next to fitting the same rows in one place.

What is measured
----------------
Three in-process sites hold ``N`` rows × 16 each (a mixture of 8 Gaussians);
K = 8, full covariance. All contenders start from the same Params.

``pooled``
    One EM iteration (``distmix.em.e_step`` + ``distmix.mstep.m_step``) over a
    ``LocalEngine`` holding the three sites' rows together.
``federated``
    The same iteration over a ``FederatedEngine`` (threshold mode, the default
    manifest): one round of compute requests, the sites' E-steps side by side
    on the same cores, masked fixed-point vectors, the unmasking exchange, the
    decoded exact sum, then the M-step.
``secure sum``
    The protocol alone: the same round, with sites whose engines hand back
    their E-step's statistics at once (computed beforehand), so that only
    encoding, bounds, masks, sealed shares, the message copies, unmasking and
    decoding are timed; reported against one site's E-step.

Repetitions are interleaved (pooled, federated, secure sum) and the median
reported. The parameters after the pooled and federated iterations are
compared (max relative difference, expected ~1e-15); the script exits with 1
when they differ by more than ``--tolerance``.

Targets (issue 11): ``federated / pooled <= 1.15``; ``secure sum / one site's
E-step <= 0.10``. Bytes a site sends per iteration (its compute and unmask
replies) are reported against ``K·(1 + D + D(D+1)/2)`` float64 (the statistics
themselves, unmasked).

Usage::

    python benchmarks/bench_federated.py            # N = 1,000,000 per site, 5 repeats
    python benchmarks/bench_federated.py --quick    # N = 50,000, 3 repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average, n_cores  # noqa: E402

from distmix.em import e_step  # noqa: E402
from distmix.engines.local import LocalEngine  # noqa: E402
from distmix.federated import Federation, Site  # noqa: E402
from distmix.mstep import m_step  # noqa: E402
from distmix.params import Params  # noqa: E402
from distmix.sources.blocks import default_block_rows  # noqa: E402

K, D, N_SITES = 8, 16, 3


def site_rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(scale=4.0, size=(K, D))
    labels = rng.integers(K, size=n)
    return centres[labels] + rng.normal(size=(n, D))


class ReadyStats:
    """An engine stand-in that answers a task with statistics computed beforehand."""

    def __init__(self, engine: Any, task: str, args: tuple) -> None:
        self.n_rows, self.n_features = engine.n_rows, engine.n_features
        self._answers = {"nonfinite": engine.reduce("nonfinite"), task: engine.reduce(task, *args)}

    def reduce(self, task: str, *args: Any) -> Any:
        return self._answers[task]


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per site")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50,000 rows per site, 3 repeats")
    parser.add_argument("--tolerance", type=float, default=1e-12)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 50_000, 3

    rows = [site_rows(100 + s, args.rows) for s in range(N_SITES)]
    pooled_rows = np.concatenate(rows)
    rng = np.random.default_rng(1)
    start = Params.from_covariances(
        np.full(K, 1.0 / K),
        pooled_rows[rng.choice(pooled_rows.shape[0], K, replace=False)],
        np.stack([np.eye(D)] * K),
        "full",
    )
    block = default_block_rows(K, D)
    pooled = LocalEngine(pooled_rows, block_size=block)
    sites = [Site(r, f"site-{i}", block_size=block) for i, r in enumerate(rows)]
    federation = Federation(sites)
    federated = federation.engine()

    # the protocol alone: the same sites' statistics, ready at once
    ready_sites = [Site(engine=ReadyStats(s.engine, "estep", (start,)), name=s.name) for s in sites]
    ready = Federation(ready_sites, federation.manifest).engine()
    one_site = sites[0].engine

    sent: dict[str, int] = {}

    def count(name: str, request: Any, reply: Any) -> None:
        if name == "site-0" and request.kind in ("compute", "unmask"):
            size = sum(a.nbytes for a in reply.arrays.values())
            size += sum(
                sum(len(v) for v in value) if isinstance(value, list) else len(str(value))
                for value in reply.config.values()
            )
            sent[request.kind] = size

    federation.transport.listeners.append(count)  # type: ignore[attr-defined]

    def iteration(engine: Any) -> Params:
        return m_step(e_step(engine, start), 1e-6)

    contenders = {
        "pooled": lambda: iteration(pooled),
        "federated": lambda: iteration(federated),
        "secure sum": lambda: ready.reduce("estep", start),
        "one site's E-step": lambda: one_site.reduce("estep", start),
    }
    results = {name: fn() for name, fn in contenders.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) for name, t in times.items()}

    gap = max(
        relative_gap(getattr(results["federated"], a), getattr(results["pooled"], a))
        for a in ("weights", "means", "covariances")
    )
    raw = K * (1 + D + D * (D + 1) // 2) * 8
    print(f"# bench_federated: {N_SITES} sites x {args.rows:,} rows x {D}, K = {K}, full")
    print(f"# machine: {cpu_model()}, {n_cores()} cores, load {load_average()}")
    print(
        f"# manifest: {federation.manifest.words_per_value} words per value, "
        f"{federation.manifest.digit_bits}-bit digits, threshold {federation.manifest.threshold}"
    )
    print()
    print("| contender | s/iteration (median) | ratio | target |")
    print("|---|---|---|---|")
    ratio_fed = median["federated"] / median["pooled"]
    ratio_sec = median["secure sum"] / median["one site's E-step"]
    print(f"| pooled | {median['pooled']:.4f} | 1 | |")
    print(
        f"| federated | {median['federated']:.4f} | {ratio_fed:.3f} (federated / pooled) "
        f"| <= 1.15 {'PASS' if ratio_fed <= 1.15 else 'FAIL'} |"
    )
    print(f"| one site's E-step | {median[chr(111) + 'ne site' + chr(39) + 's E-step']:.4f} | | |")
    print(
        f"| secure sum alone | {median['secure sum']:.4f} | {ratio_sec:.3f} (/ one site's "
        f"E-step) | <= 0.10 {'PASS' if ratio_sec <= 0.10 else 'FAIL'} |"
    )
    print()
    total_sent = sum(sent.values())
    print(
        f"bytes sent by one site per iteration: {total_sent:,} (compute reply "
        f"{sent.get('compute', 0):,}, unmask reply {sent.get('unmask', 0):,}); the raw "
        f"statistics K(1 + D + D(D+1)/2) float64: {raw:,} bytes; ratio {total_sent / raw:.1f}"
    )
    print(f"parameters after one iteration, federated vs pooled: max relative gap {gap:.2e}")
    return 0 if gap <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
