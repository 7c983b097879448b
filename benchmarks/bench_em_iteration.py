"""Seconds per EM iteration: distmix (local and Dask engines) against scikit-learn.

What is measured
----------------
One EM iteration, i.e. one E-step pass over every row followed by one M-step,
for a full-covariance Gaussian mixture in float64, done by three contenders
that all start from the *same* parameters:

``sklearn``
    ``GaussianMixture._e_step(X)`` then ``GaussianMixture._m_step(X, log_resp)``
    on an estimator whose ``weights_``, ``means_``, ``covariances_`` and
    ``precisions_cholesky_`` are set to the starting parameters. These two
    private methods are exactly the body of scikit-learn's EM loop;
    ``fit()`` is not timed because it would add the initialisation (k-means)
    and a final E-step to the one iteration we want.
``local``
    ``distmix.em.e_step`` over a ``distmix.engines.LocalEngine`` with
    ``block_size=distmix.sources.blocks.default_block_rows(K, D)`` and the default
    number of threads (one per core), then ``distmix.mstep.m_step``.
``dask``
    The same over a ``distmix.engines.DaskEngine`` built on
    ``dask.array.from_array(X, chunks=(block rows, D))``, computed on Dask's
    default threaded scheduler (no ``distributed.Client`` is created).

Every repetition starts again from the starting parameters, so each timing
covers identical work. Each contender is warmed up once (imports, thread
pools, page faults), then ``--repeats`` repetitions are run with the
contenders interleaved, and their order rotated each round, so that slow
spells of the machine hit all three alike; the median is reported.

Why
---
The targets are that distmix's in-memory engine takes at most half
scikit-learn's time per iteration (``local / sklearn <= 0.5``) and that
running the same blocks through Dask costs at most 25 % more than the local
engine (``dask / local <= 1.25``).

So that the benchmark cannot time the wrong work, the parameters after the
iteration are compared across the three contenders (weights, means and
covariances; the mean log-likelihood of the E-step as well). The difference
reported is ``max |a - b| / max |b|`` per array, which should be about
``1e-12`` (rounding only); the script exits with status 1 when it exceeds
``--tolerance``.

Usage
-----
::

    python benchmarks/bench_em_iteration.py            # full shapes, 5 repeats
    python benchmarks/bench_em_iteration.py --quick    # N / 20, smoke run
    python benchmarks/bench_em_iteration.py --covariance-type diag   # the same for diag
    python benchmarks/bench_em_iteration.py --fingerprint   # + the data-fingerprint pass

``--fingerprint`` adds two contenders, ``local+fp`` and ``dask+fp``: the same
iteration whose E-step pass also computes the data fingerprint that binds a
checkpoint to its data (``distmix.em.e_step_fingerprinted``; a fit with a
checkpoint does this in its first pass only, every later pass is plain). Their
ratios to ``local`` and ``dask`` are the cost of that pass (target < 1.02).

The machine's BLAS (``threadpoolctl.threadpool_info()``) and the OpenBLAS
environment variables that change its kernels are printed first, since the
figures depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import sklearn
import threadpoolctl
from _machine import cpu_model, load_average
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import distmix
import distmix.em
import distmix.engines
import distmix.kernels
import distmix.mstep
import distmix.sources.blocks
from distmix.params import Params

#: (N, D, K) of the full run; ``--quick`` divides N by QUICK_DIVISOR
SHAPES: tuple[tuple[int, int, int], ...] = ((1_000_000, 16, 8), (200_000, 64, 16))
QUICK_DIVISOR = 20
REG_COVAR = 1e-6  # scikit-learn's default
INIT_SUBSAMPLE_ROWS = 10_000
TARGET_LOCAL_OVER_SKLEARN = 0.5
TARGET_DASK_OVER_LOCAL = 1.25
CONTENDERS = ("sklearn", "local", "dask")
TARGET_FINGERPRINT = 1.02
#: iterations of a typical fit, over which the one fingerprinting pass is spread
FIT_ITERATIONS = 10


# -- data and starting parameters ---------------------------------------------
def mixture_rows(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """``(n, d)`` float64 rows from a seeded mixture of ``k`` full-covariance Gaussians.

    Centres are ``N(0, 1.5²)`` per coordinate (components overlap a little, so
    responsibilities are not all 0 or 1); covariances are ``A Aᵀ + ½ I`` with a
    random ``A``. Rows are filled in place, one component at a time, so the
    peak memory is about one copy of ``X``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(k, d))
    mixing = rng.normal(size=(k, d, d)) / np.sqrt(d)
    chol = np.linalg.cholesky(mixing @ np.swapaxes(mixing, 1, 2) + 0.5 * np.eye(d))
    weights = rng.dirichlet(np.full(k, 5.0))
    labels = rng.choice(k, size=n, p=weights)
    X = np.empty((n, d))
    for j in range(k):
        rows = np.flatnonzero(labels == j)
        X[rows] = centres[j] + rng.standard_normal((rows.size, d)) @ chol[j].T
    return X


def starting_params(X: np.ndarray, k: int, seed: int, covariance_type: str = "full") -> Params:
    """Params of a short scikit-learn fit on a random subsample of ``X``.

    Realistic responsibilities (neither uniform nor hard) without paying for a
    full fit; every contender starts from exactly these arrays.
    """
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(X.shape[0], size=min(INIT_SUBSAMPLE_ROWS, X.shape[0]), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=10, random_state=seed)
        gm.fit(X[np.sort(rows)])
    return Params.from_covariances(gm.weights_, gm.means_, gm.covariances_, covariance_type)


# -- one iteration per contender ------------------------------------------------
@dataclass
class Outcome:
    """What one iteration produced: the next parameters and the E-step's mean log-likelihood."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    mean_log_lik: float


def distmix_iteration(engine: Any, params: Params, fingerprint: bool = False) -> Outcome:
    """One distmix EM iteration (one E-step pass, one M-step) from ``params``; with
    ``fingerprint``, the pass also fingerprints the data (as a checkpointed fit's first)."""
    if fingerprint:
        stats, _ = distmix.em.e_step_fingerprinted(engine, params)
    else:
        stats = distmix.em.e_step(engine, params)
    new = distmix.mstep.m_step(stats, REG_COVAR, previous=params)
    return Outcome(new.weights, new.means, new.covariances, distmix.em.mean_log_likelihood(stats))


def sklearn_iteration(gm: GaussianMixture, X: np.ndarray, params: Params) -> Outcome:
    """One scikit-learn EM iteration from ``params``: ``_e_step`` then ``_m_step``.

    These are the two calls of the body of ``BaseMixture.fit_predict``'s loop.
    ``fit()`` itself would add the initialisation and a final E-step.
    """
    gm.weights_ = np.array(params.weights)
    gm.means_ = np.array(params.means)
    gm.covariances_ = np.array(params.covariances)
    gm.precisions_cholesky_ = np.array(params.precisions_cholesky)
    mean_log_lik, log_resp = gm._e_step(X)
    gm._m_step(X, log_resp)
    return Outcome(gm.weights_, gm.means_, gm.covariances_, float(mean_log_lik))


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a − b| / max |b|`` (normwise, so near-zero entries do not blow it up)."""
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) / (scale if scale > 0 else 1.0)


def outcome_diff(a: Outcome, b: Outcome) -> float:
    return max(
        rel_diff(a.weights, b.weights),
        rel_diff(a.means, b.means),
        rel_diff(a.covariances, b.covariances),
        abs(a.mean_log_lik - b.mean_log_lik) / abs(b.mean_log_lik),
    )


# -- timing -------------------------------------------------------------------
def time_once(fn: Callable[[], Outcome]) -> tuple[float, Outcome]:
    gc.collect()  # no collector pause from the previous contender's garbage
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass
class ShapeResult:
    n: int
    d: int
    k: int
    block_rows: int
    n_blocks: int
    times: dict[str, list[float]]
    diffs: dict[str, float]

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def bench_shape(
    n: int,
    d: int,
    k: int,
    repeats: int,
    seed: int,
    covariance_type: str = "full",
    fingerprint: bool = False,
    compiled: bool = False,
) -> ShapeResult:
    X = mixture_rows(n, d, k, seed)
    params = starting_params(X, k, seed, covariance_type)
    block_rows = distmix.sources.blocks.default_block_rows(k, d)
    local = distmix.engines.LocalEngine(X, None, block_size=block_rows)
    dask_engine = distmix.engines.DaskEngine(da.from_array(X, chunks=(block_rows, d)))
    gm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=REG_COVAR)

    run: dict[str, Callable[[], Outcome]] = {
        "sklearn": lambda: sklearn_iteration(gm, X, params),
        "local": lambda: distmix_iteration(local, params),
        "dask": lambda: distmix_iteration(dask_engine, params),
    }
    if fingerprint:
        run["local+fp"] = lambda: distmix_iteration(local, params, fingerprint=True)
        run["dask+fp"] = lambda: distmix_iteration(dask_engine, params, fingerprint=True)
    if compiled:

        def compiled_iteration() -> Outcome:
            with distmix.kernels.use_kernel("compiled"):
                return distmix_iteration(local, params)

        run["compiled"] = compiled_iteration
    # warm-up, which also gives the outcomes to compare
    outcomes = {name: time_once(fn)[1] for name, fn in run.items()}
    diffs = {
        **(
            {"local+fp vs local": outcome_diff(outcomes["local+fp"], outcomes["local"])}
            if fingerprint
            else {}
        ),
        "local vs sklearn": outcome_diff(outcomes["local"], outcomes["sklearn"]),
        "dask vs sklearn": outcome_diff(outcomes["dask"], outcomes["sklearn"]),
        "dask vs local": outcome_diff(outcomes["dask"], outcomes["local"]),
        **(
            {"compiled vs local": outcome_diff(outcomes["compiled"], outcomes["local"])}
            if compiled
            else {}
        ),
    }
    names = tuple(run)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, _ = time_once(run[name])
            times[name].append(seconds)
    return ShapeResult(n, d, k, block_rows, len(local.block_rows), times, diffs)


# -- report -------------------------------------------------------------------


def print_environment() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"date: {datetime.date.today().isoformat()}   host: {cpu_model()}, {cores} cores")
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  "
        f"scikit-learn {sklearn.__version__}  dask {dask.__version__}  "
        f"distmix {getattr(distmix, '__version__', '?')}"
    )
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        print(f"{var}={os.environ.get(var, '<unset>')}")
    print("threadpoolctl.threadpool_info():")
    for pool in threadpoolctl.threadpool_info():
        keys = (
            "user_api",
            "internal_api",
            "version",
            "architecture",
            "threading_layer",
            "num_threads",
        )
        print("  " + "  ".join(f"{key}={pool.get(key)}" for key in keys))
        print(f"    {pool.get('filepath')}")
    print(f"load average before the run (1, 5, 15 min): {load_average()}")
    scheduler = dask.base.get_scheduler(collections=[da.zeros(1)])
    print(f"dask scheduler: {scheduler.__module__}.{scheduler.__name__}")
    print()


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def print_table(results: list[ShapeResult], tolerance: float) -> bool:
    """Print the timing and agreement tables; True when the parameters agree."""
    columns = [
        ("shape (N x D, K)", "", 22),
        ("blocks", "(n x rows)", 12),
        ("sklearn s/it", "", 14),
        ("local s/it", "", 12),
        ("dask s/it", "", 11),
        ("local/sklearn", f"(<= {TARGET_LOCAL_OVER_SKLEARN})", 15),
        ("", "", 6),
        ("dask/local", f"(<= {TARGET_DASK_OVER_LOCAL})", 12),
        ("", "", 6),
    ]
    for row in (0, 1):
        print(
            "".join(
                f"{col[row]:<{width}}" if i == 0 else f"{col[row]:>{width}}"
                for i, (*col, width) in enumerate(columns)
            )
        )
    print("-" * sum(width for *_, width in columns))
    for res in results:
        sk, lo, dk = (res.median(name) for name in CONTENDERS)
        r1, r2 = lo / sk, dk / lo
        shape = f"{res.n:,} x {res.d}, K={res.k}"
        blocks = f"{res.n_blocks} x {res.block_rows}"
        print(
            f"{shape:<22}{blocks:>12}{sk:>14.3f}{lo:>12.3f}{dk:>11.3f}"
            f"{r1:>15.3f}{verdict(r1, TARGET_LOCAL_OVER_SKLEARN):>6}"
            f"{r2:>12.3f}{verdict(r2, TARGET_DASK_OVER_LOCAL):>6}"
        )
    print()
    if "local+fp" in results[0].times:
        print(
            "the pass that also fingerprints the data (a checkpointed fit's first; "
            f"target < {TARGET_FINGERPRINT}):"
        )
        for res in results:
            r1 = res.median("local+fp") / res.median("local")
            r2 = res.median("dask+fp") / res.median("dask")
            print(
                f"  {res.n:,} x {res.d}, K={res.k}:  local+fp {res.median('local+fp'):.3f} s/it, "
                f"local+fp/local {r1:.3f} {'PASS' if r1 < TARGET_FINGERPRINT else 'FAIL'}   "
                f"dask+fp {res.median('dask+fp'):.3f} s/it, dask+fp/dask {r2:.3f} "
                f"{'PASS' if r2 < TARGET_FINGERPRINT else 'FAIL'}"
            )
            print(
                f"    over a checkpointed fit of {FIT_ITERATIONS} iterations (one such pass): "
                f"+{(r1 - 1) / FIT_ITERATIONS:.2%} (local), +{(r2 - 1) / FIT_ITERATIONS:.2%} "
                "(dask) per iteration"
            )
        print()
    if "compiled" in results[0].times:
        print("the fused compiled kernel (distmix.fused) on the local engine's blocks:")
        for res in results:
            c = res.median("compiled")
            print(
                f"  {res.n:,} x {res.d}, K={res.k}:  compiled {c:.3f} s/it  "
                f"compiled/sklearn {c / res.median('sklearn'):.3f}  "
                f"compiled/local {c / res.median('local'):.3f}  "
                f"({c / res.n * 1e9:.0f} ns/row)"
            )
        print()
    print("every repetition (s), in the order run; spread = max / min:")
    for res in results:
        print(f"  {res.n:,} x {res.d}, K={res.k}")
        for name in res.times:
            t = res.times[name]
            print(f"    {name:<8} {' '.join(f'{x:.3f}' for x in t)}   spread {max(t) / min(t):.2f}")
    print()
    print(f"next parameters agree? max relative difference (tolerance {tolerance:g}):")
    agree = True
    for res in results:
        parts = []
        for pair, value in res.diffs.items():
            ok = value <= tolerance
            agree &= ok
            parts.append(f"{pair} {value:.1e}{'' if ok else ' MISMATCH'}")
        print(f"  {res.n:,} x {res.d}, K={res.k}:  " + "   ".join(parts))
    return agree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"N / {QUICK_DIVISOR} rows per shape (a smoke run)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the start")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-9,
        help="largest relative difference of the next parameters accepted (default 1e-9)",
    )
    parser.add_argument(
        "--covariance-type",
        choices=("full", "tied", "diag", "spherical"),
        default="full",
        help="covariance type of the mixture fitted (default full; the targets are for full)",
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="also time the pass that fingerprints the data (local+fp, dask+fp)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the local engine with the fused compiled kernel (distmix.fused)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")

    print_environment()
    results = []
    for n, d, k in SHAPES:
        n = n // QUICK_DIVISOR if args.quick else n
        print(f"running N={n:,} D={d} K={k} {args.covariance_type} ...", flush=True)
        results.append(
            bench_shape(
                n,
                d,
                k,
                args.repeats,
                args.seed,
                args.covariance_type,
                args.fingerprint,
                args.compiled,
            )
        )
        gc.collect()  # free this shape's data before the next is generated
    print()
    agree = print_table(results, args.tolerance)
    print(f"\nload average after the run (1, 5, 15 min): {load_average()}")
    if not agree:
        print("\nthe contenders disagree: the timings above are not of the same work.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
