"""Federated EM over Flower, end to end: seconds per EM iteration, and what they are spent on.

What is measured
----------------
A whole deployment on this machine (``distmix.federated.deploy.LocalFlowerFederation``):
a SuperLink with TLS and node authentication, three ``distmix site`` processes
(each a SuperNode and the site's server), ``N`` rows × 16 per site, K = 8, full
covariance, threshold mode. ``distmix federate`` runs twice from the same
means, with ``--max-iter 1`` and ``--max-iter 4`` (``--tol 0``); the difference
of their wall times over 3 is the seconds per EM iteration. The ServerApp
reports the time of every exchange (one request to every site and the
replies): an iteration is two (compute, unmask). For contrast, the same
iteration over in-process sites (no Flower) on the same rows.

Usage::

    python benchmarks/bench_federated_flower.py            # N = 200,000 per site
    python benchmarks/bench_federated_flower.py --quick    # N = 20,000
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average, n_cores  # noqa: E402

from distmix.em import e_step  # noqa: E402
from distmix.federated import Federation, Manifest, Site  # noqa: E402
from distmix.federated.deploy import LocalFlowerFederation  # noqa: E402
from distmix.params import Params  # noqa: E402

K, D, SITES = 8, 16, ("north", "south", "east")


def site_rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(scale=4.0, size=(K, D))
    return centres[rng.integers(K, size=n)] + rng.normal(size=(n, D))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per site")
    parser.add_argument("--quick", action="store_true", help="20,000 rows per site")
    args = parser.parse_args()
    if args.quick:
        args.rows = 20_000
    work = Path(tempfile.mkdtemp(prefix="dmxb-", dir="/tmp"))
    rows = [site_rows(10 + i, args.rows) for i in range(len(SITES))]
    for name, r in zip(SITES, rows, strict=True):
        np.save(work / f"{name}.npy", r)
    means = np.concatenate(rows)[np.random.default_rng(1).choice(args.rows, K, replace=False)]
    np.save(work / "means.npy", means)
    manifest = Manifest(
        sites=SITES, n_features=D, max_rows_per_site=1 << max(0, args.rows - 1).bit_length()
    )

    # in process, for contrast: one E-step round of the same sites, no Flower
    local = Federation([Site(r, n) for r, n in zip(rows, SITES, strict=True)], manifest).engine()
    start = Params.from_covariances(np.full(K, 1 / K), means, np.stack([np.eye(D)] * K), "full")
    e_step(local, start)
    t0 = time.perf_counter()
    for _ in range(3):
        e_step(local, start)
    in_process = (time.perf_counter() - t0) / 3

    walls, logs = {}, {}
    data = {name: str(work / f"{name}.npy") for name in SITES}
    with LocalFlowerFederation(work, manifest, data) as deployment:
        for max_iter in (1, 4):
            t0 = time.perf_counter()
            done = deployment.federate(
                str(work / f"model-{max_iter}.npz"),
                "--components", str(K),
                "--means-init", str(work / "means.npy"),
                "--max-iter", str(max_iter),
                "--tol", "0",
            )  # fmt: skip
            walls[max_iter] = time.perf_counter() - t0
            logs[max_iter] = done.stdout + done.stderr
            if done.returncode != 0:
                print(logs[max_iter][-3000:])
                return 1
    per_iteration = (walls[4] - walls[1]) / 3
    exchanges = re.findall(r"distmix federate: exchanges (.*)", logs[4])
    print(f"# bench_federated_flower: {len(SITES)} sites x {args.rows:,} rows x {D}, K = {K}")
    print(f"# machine: {cpu_model()}, {n_cores()} cores, load {load_average()}")
    print()
    print("| measure | seconds |")
    print("|---|---|")
    print(f"| distmix federate, --max-iter 1 (wall) | {walls[1]:.1f} |")
    print(f"| distmix federate, --max-iter 4 (wall) | {walls[4]:.1f} |")
    print(f"| **per EM iteration over Flower** | **{per_iteration:.2f}** |")
    print(f"| per EM iteration in process (same sites, no Flower) | {in_process:.3f} |")
    print()
    print(f"exchanges of the 4-iteration run: {exchanges[-1] if exchanges else 'not reported'}")
    medians = [float(m) for m in re.findall(r"x ([0-9.]+) s", exchanges[-1] if exchanges else "")]
    if medians:
        print(
            f"an exchange takes {statistics.median(medians):.2f} s (median over kinds) while the "
            f"sites' work of an iteration is {in_process:.3f} s: Flower's delivery dominates "
            "(a SuperNode polls for messages every 3 s, and starts a new ClientApp process "
            "for each message)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
