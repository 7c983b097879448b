"""Seconds per EM iteration on a CUDA device: the array-API kernel on CuPy against NumPy.

What is measured
----------------
One EM iteration (one E-step pass over every row, then the M-step on the host)
of a Gaussian mixture in float64 on W1 = 1,000,000 rows × 16 features, K = 8,
for ``full`` and ``diag`` covariances (``--covariance-type`` for others):

``numpy``
    ``distmix.em.e_step`` over a ``LocalEngine`` of the NumPy rows in host blocks
    (``default_block_rows(K, D)``, one thread per core), the array-API kernel
    forced (``use_kernel("array-api")``), then ``distmix.mstep.m_step``.
``cupy/<rows>``
    The same over a ``LocalEngine`` of the rows copied once to the device
    (``cupy.asarray``, not timed), in blocks of ``<rows>`` rows
    (``--block-rows``; default: ``device_block_rows(K, D)``, the estimator's
    default for device arrays, and a quarter and four times that). Every block's
    statistics are copied to the host as the block ends (that copy waits for the
    device), so the wall time is the device's.

Every contender is warmed up once (CuPy compiles its kernels on first use; cuBLAS
starts), then ``--repeats`` rounds run the contenders in turn, their order
rotated each round; the table gives the median seconds per iteration, ns per
row and the speed-up over ``numpy``. The parameters after the iteration are
compared with ``numpy``'s (``max |a − b| / max |b|`` per array, and the mean
log-likelihood): the script exits with status 1 when one exceeds
``--tolerance``, so that a fast wrong answer cannot pass. Without CuPy or a
device it exits with status 2, saying which.

Usage::

    python benchmarks/bench_gpu.py            # W1, full and diag, 5 repeats
    python benchmarks/bench_gpu.py --quick    # N / 20: a smoke run
    python benchmarks/bench_gpu.py --block-rows 65536,262144 --covariance-type full
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from _machine import cpu_model, load_average, n_cores
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import distmix.em
import distmix.kernels
import distmix.mstep
from distmix.engines.factory import device_block_rows
from distmix.engines.local import LocalEngine
from distmix.params import Params
from distmix.sources.blocks import default_block_rows

N_ROWS, N_FEATURES, N_COMPONENTS = 1_000_000, 16, 8
QUICK_DIVISOR = 20
REG_COVAR = 1e-6
INIT_SUBSAMPLE_ROWS = 10_000


def cuda_or_exit() -> Any:
    """CuPy, with at least one device; otherwise exit with status 2, saying why."""

    def fail(why: str) -> None:
        print(f"bench_gpu: {why}", file=sys.stderr)
        raise SystemExit(2)

    try:
        cupy = importlib.import_module("cupy")
    except ImportError as error:
        fail(f"CuPy does not import ({error}): pip install 'distmix[gpu]'.")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no device
        fail(f"no CUDA device ({type(error).__name__}: {error}).")
    if n_devices < 1:
        fail("no CUDA device (the driver reports none).")
    return cupy


def describe_device(xp: Any) -> str:
    if xp.__name__ != "cupy":
        return f"{xp.__name__} (a dry run of the script on the host, not a measurement)"
    runtime = xp.cuda.runtime
    props = runtime.getDeviceProperties(xp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (
        f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB; CUDA runtime "
        f"{runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}"
    )


def mixture_rows(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Rows of a seeded K-component mixture with random full covariances."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    chol = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    labels = rng.integers(k, size=n)
    X = np.empty((n, d))
    for j in range(k):
        rows = np.flatnonzero(labels == j)
        X[rows] = centres[j] + rng.standard_normal((rows.size, d)) @ chol[j].T
    return X


def starting_params(X: np.ndarray, k: int, covariance_type: str, seed: int) -> Params:
    """Params of a short scikit-learn fit on a subsample: realistic responsibilities."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(X.shape[0], size=min(INIT_SUBSAMPLE_ROWS, X.shape[0]), replace=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type=covariance_type, max_iter=10, random_state=seed)
        gm.fit(X[rows])
    return Params.from_covariances(gm.weights_, gm.means_, gm.covariances_, covariance_type)


def iteration(engine: LocalEngine, params: Params) -> tuple[Params, float]:
    """One EM iteration with the array-API kernel: the next Params and the mean log-likelihood."""
    with distmix.kernels.use_kernel("array-api"):
        stats = distmix.em.e_step(engine, params)
    return distmix.mstep.m_step(stats, REG_COVAR, previous=params), distmix.em.mean_log_likelihood(
        stats
    )


def difference(a: tuple[Params, float], b: tuple[Params, float]) -> float:
    """The largest ``max |a − b| / max |b|`` over weights, means, covariances and the
    mean log-likelihood."""
    worst = abs(a[1] - b[1]) / max(abs(b[1]), 1e-300)
    for name in ("weights", "means", "covariances"):
        x, y = np.asarray(getattr(a[0], name)), np.asarray(getattr(b[0], name))
        worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)))
    return worst


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"N / {QUICK_DIVISOR}: a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--covariance-type", default="full,diag", help="comma-separated (default full,diag)"
    )
    parser.add_argument(
        "--block-rows",
        default=None,
        help="comma-separated rows per device block (default: "
        "the estimator's default for device arrays, a quarter and four times it)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-9)
    # a dry run of the script on the host: array_api_strict stands in for CuPy
    parser.add_argument("--namespace", default="cupy", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    xp = cuda_or_exit() if args.namespace == "cupy" else importlib.import_module(args.namespace)

    n = args.rows or (N_ROWS // QUICK_DIVISOR if args.quick else N_ROWS)
    d, k = N_FEATURES, N_COMPONENTS
    types = [t.strip() for t in args.covariance_type.split(",") if t.strip()]
    if args.block_rows:
        block_rows = [int(b) for b in args.block_rows.split(",")]
    else:
        default = device_block_rows(k, d)
        block_rows = [default // 4, default, default * 4]
    block_rows = sorted({min(b, n) for b in block_rows})

    print(f"device: {describe_device(xp)}")
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("cupy-cuda12x", "numpy", "distmix")
        if _installed(p)
    )
    print(f"host: {cpu_model()}, {n_cores()} cores; {versions}")
    print(f"load average before: {load_average()}")
    print(
        f"W1: {n:,} rows x {d} features, K = {k}; {args.repeats} rounds; device blocks "
        f"{', '.join(f'{b:,}' for b in block_rows)} rows; host blocks "
        f"{default_block_rows(k, d):,} rows"
    )

    X = mixture_rows(n, d, k, args.seed)
    X_device = xp.asarray(X)
    failed = False
    table = []
    for covariance_type in types:
        params = starting_params(X, k, covariance_type, args.seed)
        contenders: dict[str, LocalEngine] = {
            "numpy": LocalEngine(X, None, default_block_rows(k, d))
        }
        for rows in block_rows:
            contenders[f"{xp.__name__}/{rows}"] = LocalEngine(X_device, None, rows)
        outcomes = {name: iteration(engine, params) for name, engine in contenders.items()}
        for name, outcome in outcomes.items():  # the warm-up's results, checked
            gap = difference(outcome, outcomes["numpy"])
            if gap > args.tolerance:
                failed = True
                print(f"  {covariance_type} {name}: differs from numpy by {gap:.2e} (FAIL)")
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                run = functools.partial(iteration, contenders[name], params)
                seconds[name].append(timed(run)[0])
        base = statistics.median(seconds["numpy"])
        for name in names:
            median = statistics.median(seconds[name])
            spread = max(seconds[name]) / min(seconds[name])
            gap = difference(outcomes[name], outcomes["numpy"])
            table.append(
                (covariance_type, name, median, 1e9 * median / n, base / median, spread, gap)
            )
    print(f"load average after: {load_average()}\n")
    print(
        f"{'type':<10} {'contender':<14} {'s/iter':>9} {'ns/row':>9} {'x numpy':>8} "
        f"{'spread':>7} {'vs numpy':>9}"
    )
    for covariance_type, name, median, per_row, speed_up, spread, gap in table:
        print(
            f"{covariance_type:<10} {name:<14} {median:>9.4f} {per_row:>9.1f} "
            f"{speed_up:>8.2f} {spread:>7.2f} {gap:>9.1e}"
        )
    return 1 if failed else 0


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
