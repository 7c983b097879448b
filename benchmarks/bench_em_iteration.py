"""Seconds per EM iteration: distmix's kernels and engines against scikit-learn.

What is measured
----------------
One EM iteration, i.e. one E-step pass over every row followed by one M-step,
of a Gaussian mixture in float64, for every covariance type (``full``,
``tied``, ``diag``, ``spherical``) on both shapes:

``W1``
    1,000,000 rows × 16 features, K = 8 components (128 MB of rows);
``W2``
    200,000 rows × 64 features, K = 16 (100 MB).

Each shape's rows are drawn once and serve all four covariance types; each
type starts from its own parameters (a short scikit-learn fit on a subsample,
:func:`starting_params`), and every contender of that shape and type starts
from exactly those ``Params``:

``sklearn``
    ``GaussianMixture._e_step(X)`` then ``GaussianMixture._m_step(X, log_resp)``
    on an estimator whose ``weights_``, ``means_``, ``covariances_`` and
    ``precisions_cholesky_`` are set to the starting parameters. These two
    private methods are exactly the body of scikit-learn's EM loop;
    ``fit()`` is not timed because it would add the initialisation (k-means)
    and a final E-step to the one iteration we want.
``local``
    ``distmix.em.e_step`` over a ``distmix.engines.LocalEngine`` with
    ``block_size=distmix.sources.blocks.default_block_rows(K, D)`` and the
    default number of threads (one per core), then ``distmix.mstep.m_step``,
    with the array-API kernel forced
    (``with distmix.kernels.use_kernel("array-api"):``).
``compiled``
    The same engine and blocks with the fused compiled kernel forced
    (``use_kernel("compiled")``: :mod:`distmix.fused`, numba). ``--no-compiled``
    leaves it out (and numba unimported).
``dask``
    The same over a ``distmix.engines.DaskEngine`` built on
    ``dask.array.from_array(X, chunks=(block rows, D))``, computed on Dask's
    default threaded scheduler (no ``distributed.Client`` is created), with the
    array-API kernel forced as for ``local``, so that ``dask / local`` is the
    cost of running the same kernel through Dask.

Each contender is warmed up once per shape and type (imports, thread pools,
page faults; not timed), then ``--repeats`` repetitions are run with the
contenders interleaved, and their order rotated each round, so that slow
spells of the machine hit all of them alike; the median is reported, in
seconds per iteration and in nanoseconds per row. Before its warm-up, the
compiled kernel is called once on a few rows of the data; for each
covariance type, the first such call (numba's compilation, or the load of
its on-disk cache) is timed and printed on its own, and never enters the
timings. ``DISTMIX_KERNEL`` does not matter: every distmix contender chooses
its kernel itself.

FLOP model
----------
Flops of one E-step pass, counted per row and component (so ``N·K`` times
that per iteration); a multiply-add is 2 flops, every other arithmetic
operation 1:

``full``
    ``2 D (D + 1) + 5 D``: the triangular product ``(x − μ_k) U_k`` that gives
    the Mahalanobis term (``D (D + 1) / 2`` multiply-adds), the upper triangle
    of the second moment ``r (x − μ_k)(x − μ_k)ᵀ`` (another ``D (D + 1) / 2``),
    and ``O(D)``: centring (``D``), the squared norm (``D`` multiply-adds),
    ``r (x − μ_k)`` (``D``) and the first moment's sum (``D``).
``tied``
    As ``full`` (one shared ``U``, but every row is still centred about each
    component's mean, and the one second moment sums every component's).
``diag``
    ``8 D``, about 3 ``D`` multiply-adds: centring and scaling by the precision
    (``2 D``), the squared norm (``D`` multiply-adds), ``r (x − μ_k)`` and the
    first moment (``2 D``), the second moment ``r (x − μ_k)²`` (``D``
    multiply-adds).
``spherical``
    As ``diag`` less the scaling (the precision is one number): ``7 D``.

Not counted: per row and component the exponential and the log-sum-exp over
the components, and the M-step (``O(K D³)`` once per iteration), so the model
is a floor, and a low one for small ``D`` (``diag`` and ``spherical`` on W1),
where that elementwise work dominates. The achieved GFLOP/s of ``compiled``
and ``local`` (model flops / median seconds of the whole iteration) are
printed with their fraction of this machine's DGEMM rate on all threads.

DGEMM rate
----------
Measured in the same run, at the start and at the end: the median of 3
products ``a @ b`` of two 2,000 × 2,000 float64 matrices, with BLAS held to 1
thread and to every core (``threadpoolctl``). The fractions above are of the
higher of the two all-thread rates (the less disturbed one).

Targets
-------
The fused kernel's targets are on ``compiled / sklearn``:

==========  =========  =========
type        W1         W2
==========  =========  =========
full        <= 0.06    <= 0.18
diag        <= 0.06    <= 0.2
spherical   <= 0.06    <= 0.2
tied        none       none
==========  =========  =========

The summary table gives, per shape and type, every contender's median,
``compiled / sklearn`` with its target and a PASS/MISS verdict, and
``local / sklearn``, ``compiled / local`` and ``dask / local``. The previous
targets, ``local / sklearn <= 0.5`` (full) and ``dask / local <= 1.25`` (every
type), are printed after it for information. No target sets the exit status.

So that the benchmark cannot time the wrong work, the parameters after the
iteration are compared (weights, means and covariances; the mean
log-likelihood of the E-step as well): ``local`` against ``sklearn``, and
``compiled`` and ``dask`` against ``local``. The difference reported is
``max |a - b| / max |b|`` per array, which should be about ``1e-12`` (rounding
only); the script exits with status 1 when it exceeds ``--tolerance``, and
otherwise with 0.

Usage
-----
::

    python benchmarks/bench_em_iteration.py            # all types, both shapes, 5 repeats
    python benchmarks/bench_em_iteration.py --quick    # N / 20, smoke run
    python benchmarks/bench_em_iteration.py --covariance-type diag,spherical   # these two
    python benchmarks/bench_em_iteration.py --no-compiled   # without the fused kernel
    python benchmarks/bench_em_iteration.py --fingerprint   # + the data-fingerprint pass

``--fingerprint`` adds two contenders, ``local+fp`` and ``dask+fp`` (array-API
kernel): the same iteration whose E-step pass also computes the data
fingerprint that binds a checkpoint to its data
(``distmix.em.e_step_fingerprinted``; a fit with a checkpoint does this in its
first pass only, every later pass is plain). Their ratios to ``local`` and
``dask`` are the cost of that pass (target < 1.02).

The machine (CPU model, cores), the versions (numba's included), the
``DISTMIX_KERNEL`` variable, the machine's BLAS
(``threadpoolctl.threadpool_info()``) and the OpenBLAS environment variables
that change its kernels are printed first, since the figures depend on them;
the load average is printed before and after the run. The "every repetition"
section and the table keep the format ``compare_checkouts.py`` reads (with one
covariance type per run, as it asks for).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
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
from _machine import cpu_model, dgemm_gflops, load_average, n_cores
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
SHAPE_NAMES = ("W1", "W2")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
QUICK_DIVISOR = 20
REG_COVAR = 1e-6  # scikit-learn's default
INIT_SUBSAMPLE_ROWS = 10_000
#: ``compiled / sklearn`` at most, per covariance type and shape; a type not listed has none
TARGETS_COMPILED_OVER_SKLEARN: dict[str, dict[str, float]] = {
    "full": {"W1": 0.06, "W2": 0.18},
    "diag": {"W1": 0.06, "W2": 0.2},
    "spherical": {"W1": 0.06, "W2": 0.2},
}
#: the previous targets, printed for information
TARGET_LOCAL_OVER_SKLEARN = 0.5  # full only
TARGET_DASK_OVER_LOCAL = 1.25
TARGET_FINGERPRINT = 1.02
#: iterations of a typical fit, over which the one fingerprinting pass is spread
FIT_ITERATIONS = 10
#: the DGEMM rate: median of DGEMM_REPEATS products of two DGEMM_SIZE² float64 matrices
DGEMM_SIZE = 2000
DGEMM_REPEATS = 3
#: rows the compiled kernel's first call (its compilation) is made on
FIRST_CALL_ROWS = 256
#: which kernel each distmix contender forces (``sklearn`` runs scikit-learn's code)
KERNEL_OF: dict[str, str] = {
    "local": "array-api",
    "compiled": "compiled",
    "dask": "array-api",
    "local+fp": "array-api",
    "dask+fp": "array-api",
}

#: flops of the E-step per row and component, per covariance type (the model of the docstring)
FLOPS_PER_ROW_AND_COMPONENT: dict[str, Callable[[int], int]] = {
    "full": lambda d: 2 * d * (d + 1) + 5 * d,
    "tied": lambda d: 2 * d * (d + 1) + 5 * d,
    "diag": lambda d: 8 * d,
    "spherical": lambda d: 7 * d,
}


def estep_flops(n: int, d: int, k: int, covariance_type: str) -> int:
    """Flops of one E-step pass over ``n`` rows by the model of the module docstring."""
    return n * k * FLOPS_PER_ROW_AND_COMPONENT[covariance_type](d)


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


def with_kernel(kernel: str, iteration: Callable[[], Outcome]) -> Callable[[], Outcome]:
    """``iteration`` run with distmix's block kernel forced to ``kernel``."""

    def run() -> Outcome:
        with distmix.kernels.use_kernel(kernel):
            return iteration()

    return run


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


#: the agreement checks: (contender, the one it is compared with)
AGREEMENT_PAIRS = (
    ("local", "sklearn"),
    ("compiled", "local"),
    ("dask", "local"),
    ("local+fp", "local"),
    ("dask+fp", "dask"),
)


# -- the compiled kernel's first call -------------------------------------------
@dataclass
class FirstCall:
    """The compiled kernel's first call on one covariance type: seconds and what numba did."""

    seconds: float
    how: str


def import_fused() -> tuple[Any, float]:
    """:mod:`distmix.fused` (numba with it) and the seconds its import took."""
    start = time.perf_counter()
    fused = importlib.import_module("distmix.fused")
    return fused, time.perf_counter() - start


def _numba_counts(dispatcher: Any) -> tuple[int, int, int] | None:
    """(compiled signatures, cache hits, cache misses) of a numba dispatcher, if it says."""
    stats = getattr(dispatcher, "stats", None)
    signatures = getattr(dispatcher, "signatures", None)
    if stats is None or signatures is None:
        return None
    return len(signatures), sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def compiled_first_call(fused: Any, X: np.ndarray, params: Params) -> FirstCall:
    """Time one call of the fused kernel on the first FIRST_CALL_ROWS rows of ``X``.

    On the first call for a specialisation numba compiles it or loads it from
    its on-disk cache; the warm-up that follows is then free of either.
    """
    dispatcher = getattr(fused, "_estep", None)  # the compiled entry point, if still so named
    before = _numba_counts(dispatcher)
    start = time.perf_counter()
    fused.chunk_stats(X[:FIRST_CALL_ROWS], params)
    seconds = time.perf_counter() - start
    after = _numba_counts(dispatcher)
    if before is None or after is None:
        how = "numba's compile statistics not available"
    elif after[0] == before[0]:
        how = "already compiled in this process"
    elif after[1] > before[1]:
        how = "loaded from numba's cache"
    else:
        how = "compiled by numba"
    return FirstCall(seconds, how)


# -- timing -------------------------------------------------------------------
def time_once(fn: Callable[[], Outcome]) -> tuple[float, Outcome]:
    gc.collect()  # no collector pause from the previous contender's garbage
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@dataclass
class Result:
    """The timings of every contender on one shape and covariance type."""

    shape: str
    n: int
    d: int
    k: int
    covariance_type: str
    block_rows: int
    n_blocks: int
    times: dict[str, list[float]]
    diffs: dict[str, float]

    @property
    def label(self) -> str:
        return f"{self.n:,} x {self.d}, K={self.k}"

    @property
    def flops(self) -> int:
        return estep_flops(self.n, self.d, self.k, self.covariance_type)

    def has(self, name: str) -> bool:
        return name in self.times

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, other: str) -> float | None:
        if not (self.has(name) and self.has(other)):
            return None
        return self.median(name) / self.median(other)


@dataclass
class ShapeData:
    """One shape's rows and the engines over them, shared by every covariance type."""

    name: str
    X: np.ndarray
    k: int
    block_rows: int
    local: distmix.engines.LocalEngine
    dask_engine: distmix.engines.DaskEngine


def shape_data(name: str, n: int, d: int, k: int, seed: int) -> ShapeData:
    X = mixture_rows(n, d, k, seed)
    block_rows = distmix.sources.blocks.default_block_rows(k, d)
    local = distmix.engines.LocalEngine(X, None, block_size=block_rows)
    dask_engine = distmix.engines.DaskEngine(da.from_array(X, chunks=(block_rows, d)))
    return ShapeData(name, X, k, block_rows, local, dask_engine)


def bench_type(
    data: ShapeData,
    covariance_type: str,
    repeats: int,
    seed: int,
    fingerprint: bool = False,
    fused: Any = None,
    first_call: Callable[[FirstCall], None] | None = None,
) -> Result:
    """Time every contender on ``data`` for one covariance type (``fused``: the compiled
    kernel's module, ``None`` to leave it out; ``first_call`` gets its first call's time)."""
    X, k = data.X, data.k
    params = starting_params(X, k, seed, covariance_type)
    gm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=REG_COVAR)
    iterations: dict[str, Callable[[], Outcome]] = {
        "sklearn": lambda: sklearn_iteration(gm, X, params),
        "local": lambda: distmix_iteration(data.local, params),
    }
    if fused is not None:
        iterations["compiled"] = lambda: distmix_iteration(data.local, params)
    iterations["dask"] = lambda: distmix_iteration(data.dask_engine, params)
    if fingerprint:
        iterations["local+fp"] = lambda: distmix_iteration(data.local, params, fingerprint=True)
        iterations["dask+fp"] = lambda: distmix_iteration(
            data.dask_engine, params, fingerprint=True
        )
    run = {
        name: with_kernel(KERNEL_OF[name], fn) if name in KERNEL_OF else fn
        for name, fn in iterations.items()
    }
    if fused is not None:
        called = compiled_first_call(fused, X, params)
        if first_call is not None:
            first_call(called)
    # warm-up (not timed), which also gives the outcomes to compare
    outcomes = {name: time_once(fn)[1] for name, fn in run.items()}
    diffs = {
        f"{a} vs {b}": outcome_diff(outcomes[a], outcomes[b])
        for a, b in AGREEMENT_PAIRS
        if a in outcomes and b in outcomes
    }
    names = tuple(run)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, _ = time_once(run[name])
            times[name].append(seconds)
    n, d = X.shape
    return Result(
        data.name,
        n,
        d,
        k,
        covariance_type,
        data.block_rows,
        len(data.local.block_rows),
        times,
        diffs,
    )


# -- the machine ----------------------------------------------------------------
@dataclass
class DgemmRate:
    """GFLOP/s of a DGEMM with BLAS on one thread and on every core."""

    one_thread: float
    all_threads: float
    threads: int


def measure_dgemm(size: int, when: str) -> DgemmRate:
    threads = n_cores()
    rate = DgemmRate(
        dgemm_gflops(1, size, DGEMM_REPEATS), dgemm_gflops(threads, size, DGEMM_REPEATS), threads
    )
    print(
        f"DGEMM rate {when} ({size:,} x {size:,} float64 a @ b, median of {DGEMM_REPEATS}): "
        f"1 thread {rate.one_thread:.1f} GFLOP/s, {threads} threads "
        f"{rate.all_threads:.1f} GFLOP/s"
        + (
            "  (all threads slower than one: other work holds a core)"
            if rate.all_threads < rate.one_thread
            else ""
        ),
        flush=True,
    )
    return rate


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_environment() -> None:
    print(f"date: {datetime.date.today().isoformat()}   host: {cpu_model()}, {n_cores()} cores")
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  "
        f"scikit-learn {sklearn.__version__}  dask {dask.__version__}  "
        f"numba {package_version('numba')}  distmix {getattr(distmix, '__version__', '?')}"
    )
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        print(f"{var}={os.environ.get(var, '<unset>')}")
    print(
        f"{distmix.kernels.ENVIRONMENT}={os.environ.get(distmix.kernels.ENVIRONMENT, '<unset>')} "
        "(not used: every distmix contender forces its own kernel)"
    )
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


# -- report -------------------------------------------------------------------
def verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return "—"
    return "PASS" if value <= target else "MISS"


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def target_of(res: Result) -> float | None:
    return TARGETS_COMPILED_OVER_SKLEARN.get(res.covariance_type, {}).get(res.shape)


def by_type(results: list[Result]) -> dict[str, list[Result]]:
    grouped: dict[str, list[Result]] = {}
    for res in results:
        grouped.setdefault(res.covariance_type, []).append(res)
    return grouped


#: the summary table's columns: (first header line, second header line, width)
SUMMARY_COLUMNS = (
    ("shape (N x D, K)", "", 22),
    ("blocks", "(n x rows)", 12),
    ("sklearn", "s/it", 10),
    ("local", "s/it", 9),
    ("dask", "s/it", 9),
    ("compiled", "s/it", 10),
    ("compiled/", "sklearn", 11),
    ("target", "", 9),
    ("", "", 6),
    ("local/", "sklearn", 9),
    ("compiled/", "local", 11),
    ("dask/", "local", 8),
)

RATE_COLUMNS = (
    ("type", "", 11),
    ("shape", "", 7),
    ("sklearn", "ns/row", 9),
    ("local", "ns/row", 9),
    ("dask", "ns/row", 9),
    ("compiled", "ns/row", 10),
    ("model", "flop/row", 10),
    ("local", "GFLOP/s", 9),
    ("compiled", "GFLOP/s", 10),
    ("local", "/DGEMM", 8),
    ("compiled", "/DGEMM", 10),
)


def print_header(columns: tuple[tuple[str, str, int], ...]) -> None:
    for row in (0, 1):
        print(
            "".join(
                f"{col[row]:<{width}}" if i == 0 else f"{col[row]:>{width}}"
                for i, (*col, width) in enumerate(columns)
            ).rstrip()
        )
    print("-" * sum(width for *_, width in columns))


def print_summary(results: list[Result]) -> None:
    """Medians per shape and type, the ratios and the compiled kernel's targets."""
    shapes = {res.shape: res.label for res in results}
    print(
        "medians per EM iteration; target: compiled / sklearn (none for tied); "
        + "; ".join(f"{name} = {label}" for name, label in shapes.items())
    )
    for covariance_type, group in by_type(results).items():
        print(f"\n{covariance_type} covariances")
        print_header(SUMMARY_COLUMNS)
        for res in group:
            compiled = res.median("compiled") if res.has("compiled") else None
            c_sk = res.ratio("compiled", "sklearn")
            target = target_of(res)
            target_text = "—" if target is None else f"<= {target:g}"
            print(
                f"{res.label:<22}{f'{res.n_blocks} x {res.block_rows}':>12}"
                f"{res.median('sklearn'):>10.3f}{res.median('local'):>9.3f}"
                f"{res.median('dask'):>9.3f}{fmt(compiled, '.3f'):>10}"
                f"{fmt(c_sk, '.3f'):>11}{target_text:>9}{verdict(c_sk, target):>6}"
                f"{fmt(res.ratio('local', 'sklearn'), '.3f'):>9}"
                f"{fmt(res.ratio('compiled', 'local'), '.3f'):>11}"
                f"{fmt(res.ratio('dask', 'local'), '.3f'):>8}"
            )
    print()


def print_rates(results: list[Result], dgemm: float) -> None:
    """ns per row of every contender; model GFLOP/s of local and compiled against DGEMM."""
    print(
        "per row, and the flop rate by the model of the docstring (E-step flops / median "
        f"seconds per iteration); /DGEMM: fraction of {dgemm:.1f} GFLOP/s (DGEMM, all threads)"
    )
    print_header(RATE_COLUMNS)
    for res in results:
        ns = {
            name: (res.median(name) / res.n * 1e9 if res.has(name) else None)
            for name in ("sklearn", "local", "dask", "compiled")
        }
        rate = {
            name: (res.flops / res.median(name) / 1e9 if res.has(name) else None)
            for name in ("local", "compiled")
        }
        share = {name: (None if g is None else g / dgemm) for name, g in rate.items()}
        cells = [
            res.covariance_type,
            res.shape,
            *(fmt(value, ",.0f") for value in ns.values()),
            f"{res.flops / res.n:,.0f}",
            fmt(rate["local"], ".2f"),
            fmt(rate["compiled"], ".2f"),
            fmt(share["local"], ".3f"),
            fmt(share["compiled"], ".3f"),
        ]
        print(
            "".join(
                f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                for i, (cell, (*_, width)) in enumerate(zip(cells, RATE_COLUMNS, strict=True))
            )
        )
    print()


def print_previous_targets(results: list[Result]) -> None:
    print(
        f"previous targets (information only): local / sklearn <= {TARGET_LOCAL_OVER_SKLEARN} "
        f"(full), dask / local <= {TARGET_DASK_OVER_LOCAL}"
    )
    for covariance_type, group in by_type(results).items():
        parts = []
        for res in group:
            lo_sk = res.ratio("local", "sklearn")
            dk_lo = res.ratio("dask", "local")
            local_part = (
                f"local/sklearn {fmt(lo_sk, '.3f')} {verdict(lo_sk, TARGET_LOCAL_OVER_SKLEARN)}  "
                if covariance_type == "full"
                else ""
            )
            parts.append(
                f"{res.shape}: {local_part}dask/local {fmt(dk_lo, '.3f')} "
                f"{verdict(dk_lo, TARGET_DASK_OVER_LOCAL)}"
            )
        print(f"  {covariance_type:<10} " + "    ".join(parts))
    print()


def print_fingerprint(results: list[Result]) -> None:
    print(
        "the pass that also fingerprints the data (a checkpointed fit's first; "
        f"target < {TARGET_FINGERPRINT}):"
    )
    for res in results:
        r1 = res.median("local+fp") / res.median("local")
        r2 = res.median("dask+fp") / res.median("dask")
        print(
            f"  {res.covariance_type} {res.label}:  local+fp {res.median('local+fp'):.3f} s/it, "
            f"local+fp/local {r1:.3f} {'PASS' if r1 < TARGET_FINGERPRINT else 'MISS'}   "
            f"dask+fp {res.median('dask+fp'):.3f} s/it, dask+fp/dask {r2:.3f} "
            f"{'PASS' if r2 < TARGET_FINGERPRINT else 'MISS'}"
        )
        print(
            f"    over a checkpointed fit of {FIT_ITERATIONS} iterations (one such pass): "
            f"{(r1 - 1) / FIT_ITERATIONS:+.2%} (local), {(r2 - 1) / FIT_ITERATIONS:+.2%} "
            "(dask) per iteration"
        )
    print()


def print_repetitions(results: list[Result]) -> None:
    """Every repetition, one section per covariance type (the format compare_checkouts reads)."""
    for covariance_type, group in by_type(results).items():
        print(
            f"every repetition (s), {covariance_type} covariances, in the order run; "
            "spread = max / min:"
        )
        for res in group:
            print(f"  {res.label}")
            for name, t in res.times.items():
                times = " ".join(f"{x:.4f}" for x in t)
                print(f"    {name:<8} {times}   spread {max(t) / min(t):.2f}")
        print()


def print_agreement(results: list[Result], tolerance: float) -> bool:
    """Print the agreement of the next parameters; True when every pair agrees."""
    print(f"next parameters agree? max relative difference (tolerance {tolerance:g}):")
    agree = True
    for res in results:
        parts = []
        for pair, value in res.diffs.items():
            ok = value <= tolerance
            agree &= ok
            parts.append(f"{pair} {value:.1e}{'' if ok else ' MISMATCH'}")
        print(f"  {res.covariance_type:<10} {res.label}:  " + "   ".join(parts))
    return agree


def print_report(
    results: list[Result],
    first_calls: dict[str, FirstCall],
    dgemm: list[DgemmRate],
    tolerance: float,
) -> bool:
    """Print every table; True when the contenders' parameters agree."""
    print_summary(results)
    print_rates(results, max(rate.all_threads for rate in dgemm))
    print_previous_targets(results)
    if first_calls:
        print(
            "the compiled kernel's first call (numba compiles or loads its cache; "
            f"{FIRST_CALL_ROWS} rows, not in the timings):"
        )
        for covariance_type, call in first_calls.items():
            print(f"  {covariance_type:<10} {call.seconds:8.3f} s  ({call.how})")
        print()
    if results[0].has("local+fp"):
        print_fingerprint(results)
    print_repetitions(results)
    return print_agreement(results, tolerance)


def covariance_types(text: str) -> tuple[str, ...]:
    """``--covariance-type``'s comma-separated list, checked, in the order given."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in COVARIANCE_TYPES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a comma-separated list of {', '.join(COVARIANCE_TYPES)}"
            + (f" ({', '.join(unknown)} is not one)" if unknown else "")
        )
    return names


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
        type=covariance_types,
        default=COVARIANCE_TYPES,
        metavar="TYPES",
        help="comma-separated covariance types to time (default: full,tied,diag,spherical)",
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="also time the pass that fingerprints the data (local+fp, dask+fp)",
    )
    parser.add_argument(
        "--no-compiled",
        dest="compiled",
        action="store_false",
        help="leave out the fused compiled kernel (distmix.fused; numba not imported)",
    )
    # the compiled contender used to be opt-in; it is always on now
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    # smoke tests of this script on a busy machine: N further divided, a smaller DGEMM
    parser.add_argument("--rows-divisor", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--dgemm-size", type=int, default=DGEMM_SIZE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")
    if args.rows_divisor < 1:
        parser.error(f"--rows-divisor must be at least 1, got {args.rows_divisor}.")

    print_environment()
    fused = None
    if args.compiled:
        try:
            fused, import_s = import_fused()
        except Exception as error:  # numba missing, or distmix.fused broken
            print(
                f"\nimport distmix.fused failed ({type(error).__name__}: {error}); "
                "install numba, or run with --no-compiled to leave the compiled contender out.",
                file=sys.stderr,
            )
            return 2
        print(f"import distmix.fused (numba): {import_s:.2f} s")
    else:
        print("compiled contender left out (--no-compiled)")
    dgemm = [measure_dgemm(args.dgemm_size, "at the start")]
    print()

    divisor = (QUICK_DIVISOR if args.quick else 1) * args.rows_divisor
    results: list[Result] = []
    first_calls: dict[str, FirstCall] = {}
    for name, (n, d, k) in zip(SHAPE_NAMES, SHAPES, strict=True):
        data = shape_data(name, max(n // divisor, k), d, k, args.seed)
        for covariance_type in args.covariance_type:
            print(f"running N={data.X.shape[0]:,} D={d} K={k} {covariance_type} ...", flush=True)

            def record(call: FirstCall, covariance_type: str = covariance_type) -> None:
                if covariance_type not in first_calls:
                    first_calls[covariance_type] = call
                    print(
                        f"  compiled kernel's first call: {call.seconds:.3f} s ({call.how}; "
                        "not timed)",
                        flush=True,
                    )

            results.append(
                bench_type(
                    data, covariance_type, args.repeats, args.seed, args.fingerprint, fused, record
                )
            )
            gc.collect()
        del data
        gc.collect()  # free this shape's rows before the next are drawn
    print()
    dgemm.append(measure_dgemm(args.dgemm_size, "at the end"))
    print()
    agree = print_report(results, first_calls, dgemm, args.tolerance)
    print(f"\nload average after the run (1, 5, 15 min): {load_average()}")
    if not agree:
        print("\nthe contenders disagree: the timings above are not of the same work.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
