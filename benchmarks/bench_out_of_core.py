"""Out of core on a LocalCluster: one EM iteration against one read of the same Zarr store.

What is measured
----------------
A Zarr array of rows × features, float64, at least four times the *total*
memory limit of the workers (default: 2 workers × 1 GiB ⇒ 8 GiB of rows), is
fitted on a ``distributed.LocalCluster`` of separate worker processes
(``processes=True``, one thread each, ``host="127.0.0.1"``). Two things are
timed, on the same blocks (``distmix.open_dataset(path)``: one Zarr chunk per
block, all columns):

``read``
    ``open_dataset(path).sum().compute()``: every block read from the store,
    decoded (CRC-32C checked) and reduced to a number. The least any pass over
    the data can cost.
``iteration``
    ``distmix.em.e_step(DaskEngine(X), params)`` then
    ``distmix.mstep.m_step(stats, reg_covar, previous=params)`` from fixed
    Params (a full-covariance mixture, K components): the same blocks read,
    each reduced to SuffStats, the statistics added as a tree. One EM iteration
    of a fit whose data do not fit in the workers' memory.
``engine read`` (main dataset only)
    The iteration's own graph (block tasks, tree) with a kernel that only reads
    its block: what distmix's graph costs beyond ``X.sum()`` before any E-step
    arithmetic, so that ``iteration − engine read`` is the arithmetic.

The ratio ``iteration / read`` says how much of an iteration is the read: about
1 when the iteration is I/O bound, much more when it is compute bound. The
target is **≤ 2 for D = 16, K = 8** with the fused compiled kernel (it was 1.3,
unreachable with the array-API kernel). A second ratio sets the iteration
against its parts: ``iteration / (in-memory iteration + read)``, the in-memory
iteration of as many rows being the local engine's (section [4], per row, on
Zarr-chunk-sized blocks); target **≤ 1.15**: going out of core may add little
beyond the read itself. Because the E-step's cost grows with
K·D² per row while the read grows with D, the same ratio is then measured for a
few (D, K) pairs on a smaller dataset (still larger than the workers' total
memory limit, so that nothing can be kept in memory between passes) to show
where the crossover from I/O bound to compute bound lies.

Everything runs interleaved: after a warm-up of each contender (main dataset;
the crossover datasets are read right after being written, by warm workers),
``--repeats`` rounds run the contenders in rotating order, and the median is
reported, with every repetition and its spread (max / min). The load average
is printed before and after: other jobs sharing the cores skew every figure.

To tell the cluster's costs from the kernel's, one block is also timed in this
process on one thread (as a worker runs it): read and decode, E-step on the
whole block, and E-step in cache-sized pieces (``default_block_rows``).

Also checked and reported
-------------------------
* **Memory.** A background thread samples the resident set size of every
  worker process (psutil, pids from ``client.run(os.getpid)``) every 20 ms;
  the peak per worker and per phase is printed against the limit. Spilling is
  read from each worker's ``SpillBuffer`` (bytes on disk now, and the
  cumulative ``disk-write`` count and bytes), worker logs are searched for
  pausing, spilling and restarts, the worker pids are compared before and
  after (a nanny restarts a worker that passed 95 % of its limit), and a
  ``KilledWorker`` stops the run. Any of these makes the exit status 1.
* **Results agree.** The cluster's SuffStats (and the M-step's Params) are
  compared with the same pass done in this process, on Dask's threaded
  scheduler over the same ``open_dataset`` array (the in-process fit "by
  blocks": the data never fit in memory at once). They should be equal to
  rounding (the same blocks are added in the same tree); the difference
  ``max |a − b| / max |b|`` per array must be at most ``--tolerance``
  (default 1e-10), or the exit status is 1.
* **Client overhead on in-memory data.** The same iteration on a 1,000,000 × 16
  NumPy array (K = 8), by ``LocalEngine(X, block_size=rows)`` in this process
  and by ``DaskEngine(dask.array.from_array(X, chunks=(rows, D)).persist())``
  on the LocalCluster, for the same blocks; target **dask / local ≤ 1.25**.
  Two block sizes: ``default_block_rows(8, 16)`` (as ``bench_em_iteration.py``)
  and the Zarr chunk of the out-of-core runs. Both engines also run a null pass
  (the ``nonfinite`` task: one ``isfinite`` sweep), their fixed cost per pass.

Worker processes get ``MALLOC_TRIM_THRESHOLD_=65536`` from distributed's
``distributed.nanny.pre-spawn-environ`` default; setting it turns off glibc's
dynamic mmap threshold, so every temporary array over 128 KiB is a fresh
``mmap`` whose pages fault in again. ``--worker-malloc glibc`` unsets it for
the workers, to measure what that costs the E-step.

The dataset
-----------
Generated with ``distmix.sources.zarr_write.create_zarr_array`` (CRC-32C last, NaN fill)
and filled chunk by chunk, two chunks at a time on threads, with rows of a
seeded Gaussian mixture (``distmix.datasets.random_mixture``; each chunk has
its own random stream). Rows are drawn grouped by component, a matrix product
per component, then put back in the order their labels were drawn: about four
times faster than ``distmix.datasets.write_zarr``, whose boolean-mask
assignments dominate at this size (``--writer write_zarr`` uses it instead).
Datasets generated here are deleted at the end unless ``--keep``; a kept one is
reused by the next run with the same shape and seed. ``--path`` names the main
dataset: an existing Zarr array there is used as it is (its shape sets N and
D) and never deleted.

Timings read a store that the page cache may hold (this machine has more
memory than the dataset): ``--cold`` evicts the store's files from the page
cache (``posix_fadvise(POSIX_FADV_DONTNEED)``, on these files only) before
every timed repetition, so that both contenders read from the disk.

Usage
-----
::

    python benchmarks/bench_out_of_core.py --quick   # 2 x 512 MiB workers, 2 GiB (~4 min)
    python benchmarks/bench_out_of_core.py           # 2 x 1 GiB workers, 8 GiB (~30 min)
    python benchmarks/bench_out_of_core.py --keep    # keep the datasets for a later run
    python benchmarks/bench_out_of_core.py --path /tmp/x.zarr --cold --no-crossover
    python benchmarks/bench_out_of_core.py --worker-malloc glibc --no-crossover

``--quick``: 2 workers × 512 MiB, a main dataset of 4× *one* worker's limit
(2 GiB), crossover pairs ``16:1,16:8,64:8`` on 640 MiB datasets, no warm-ups,
250,000 in-memory rows. The exit status is 1 when the results disagree, a
worker spilled, restarted, logged memory trouble or passed its limit, or a
``KilledWorker`` was raised; a FAIL against a timing target is printed only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import distributed
import numpy as np
import psutil
import sklearn
import threadpoolctl
import zarr
from _machine import cpu_model, load_average
from dask.utils import format_bytes, parse_bytes
from distributed import Client, KilledWorker, LocalCluster, wait
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import distmix
import distmix.datasets
import distmix.em
import distmix.engines
import distmix.mstep
import distmix.sources.blocks
import distmix.sources.dataset
import distmix.sources.zarr_arrays
import distmix.sources.zarr_write
import distmix.tasks
from distmix.params import Params
from distmix.suffstats import SuffStats

TARGET_ITER_OVER_READ = 2.0  # with the fused compiled kernel (issue 12; 1.3 before)
#: an out-of-core iteration against the in-memory iteration of the same rows plus one read
TARGET_ITER_OVER_PARTS = 1.15
TARGET_DASK_OVER_LOCAL = 1.25
#: the dataset must hold at least this many times the workers' total memory limit
MIN_DATA_OVER_LIMIT = 4.0
#: the crossover dataset: this many times the workers' total limit (``--quick``: one worker's)
CROSSOVER_OVER_LIMIT = 1.25
#: bytes of one Zarr chunk (= one block): 65,536 rows at D = 16, as ``distmix generate`` writes
CHUNK_BYTES = 8 * 2**20
REG_COVAR = 1e-6  # scikit-learn's default
#: components of the mixture the data are drawn from (the fitted K is set separately)
DATA_COMPONENTS = 8
INIT_ROWS = 20_000
DEFAULT_PAIRS = "16:1,16:2,16:8,16:32,64:8,64:16"
QUICK_PAIRS = "16:1,16:8,64:8"
OVERHEAD_ROWS = 1_000_000
SAMPLE_SECONDS = 0.02
GENERATOR_TAG = "benchmarks/bench_out_of_core.py"
GENERATOR_FORMAT = 1
MIB = 2**20
PRE_SPAWN_ENVIRON = "distributed.nanny.pre-spawn-environ"


# -- the dataset ------------------------------------------------------------------
def mixture_chunk(
    mixture: distmix.datasets.TrueMixture, chol: np.ndarray, index: int, n: int, seed: int
) -> np.ndarray:
    """``(n, D)`` rows of chunk ``index``, drawn from ``mixture`` with the chunk's own stream.

    Labels are drawn first; the rows of each component are then made together
    (one ``(count, D) @ (D, D)`` product, no boolean mask) and scattered back
    to where their labels were drawn, so components are interleaved as in a
    plain draw.
    """
    rng = np.random.default_rng([seed, 2, index])
    k = len(mixture.weights)
    labels = rng.choice(k, size=n, p=mixture.weights)
    noise = rng.standard_normal(size=(n, mixture.means.shape[1]))
    grouped = np.empty_like(noise)
    start = 0
    for j, count in enumerate(np.bincount(labels, minlength=k)):
        stop = start + int(count)
        np.matmul(noise[start:stop], chol[j].T, out=grouped[start:stop])
        grouped[start:stop] += mixture.means[j]
        start = stop
    rows = np.empty_like(grouped)
    rows[np.argsort(labels, kind="stable")] = grouped
    return rows


def dataset_tag(n: int, d: int, seed: int, chunk_rows: int, writer: str) -> dict[str, Any]:
    """What a generated dataset records about itself, so that a kept one can be reused."""
    return {
        "generator": GENERATOR_TAG,
        "format": GENERATOR_FORMAT,
        "writer": writer,
        "rows": n,
        "features": d,
        "components": DATA_COMPONENTS,
        "seed": seed,
        "chunk_rows": chunk_rows,
    }


def is_finished_dataset(path: str, tag: dict[str, Any]) -> bool:
    """A dataset this script wrote with these settings, to the end (attributes come last)."""
    try:
        array = zarr.open_array(path, mode="r")
    except Exception:  # absent or not an array: generate it
        return False
    return dict(array.attrs).get("distmix_benchmark") == tag


def generate_dataset(
    path: str, n: int, d: int, seed: int, chunk_rows: int, writer: str, threads: int = 2
) -> float:
    """Write the dataset at ``path`` chunk by chunk; returns the seconds it took."""
    start = time.perf_counter()
    mixture = distmix.datasets.random_mixture(d, DATA_COMPONENTS, seed)
    tag = dataset_tag(n, d, seed, chunk_rows, writer)
    if writer == "write_zarr":
        array = distmix.datasets.write_zarr(
            path, n, d, DATA_COMPONENTS, seed=seed, chunk_rows=chunk_rows, overwrite=True
        )
        array.attrs.update({"distmix_benchmark": tag})
        return time.perf_counter() - start
    chol = np.linalg.cholesky(mixture.covariances)
    array = distmix.sources.zarr_write.create_zarr_array(path, (n, d), chunk_rows, overwrite=True)

    def write_chunk(index: int) -> None:
        lo = index * chunk_rows
        hi = min(lo + chunk_rows, n)
        array[lo:hi] = mixture_chunk(mixture, chol, index, hi - lo, seed)

    # NumPy's generators and matmul release the GIL: two chunks at once use both
    # cores; BLAS is held to one thread per chunk so that they do not fight
    with threadpoolctl.threadpool_limits(1), ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(write_chunk, range(math.ceil(n / chunk_rows))):
            pass
    # written last: an array without them was not finished
    array.attrs.update({**mixture.to_attrs(), "distmix_benchmark": tag})
    return time.perf_counter() - start


def store_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def store_files(path: str) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]


def evict_from_page_cache(path: str) -> None:
    """Drop the store's files (only them) from the page cache, so the next read hits the disk."""
    for name in store_files(path):
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(path: str) -> float | None:
    """Share of the store's bytes in the page cache (util-linux ``fincore``), or None."""
    if shutil.which("fincore") is None:
        return None
    files = store_files(path)
    cached = 0
    try:
        for i in range(0, len(files), 500):
            out = subprocess.run(
                [
                    "fincore",
                    "--bytes",
                    "--noheadings",
                    "--raw",
                    "--output",
                    "RES",
                    *files[i : i + 500],
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            cached += sum(int(line) for line in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None
    total = store_bytes(path)
    return cached / total if total else None


@dataclass
class Dataset:
    path: str
    n: int
    d: int
    chunk_rows: int
    nbytes: int
    generated_here: bool
    seconds_to_write: float | None


def chunk_rows_for(d: int) -> int:
    return max(1, CHUNK_BYTES // (8 * d))


def ensure_dataset(
    path: str, n: int, d: int, seed: int, writer: str, *, reuse_any: bool = False
) -> Dataset:
    """The dataset at ``path``: reused if it is there (and, unless ``reuse_any``, matches)."""
    if reuse_any and os.path.exists(path):
        array = zarr.open_array(path, mode="r")
        if array.ndim != 2:
            raise SystemExit(f"--path {path}: a {array.ndim}-D array; a 2-D array is needed.")
        rows, cols = (int(s) for s in array.shape)
        print(f"reusing {path}: {rows:,} x {cols}, chunks {array.chunks}", flush=True)
        return Dataset(path, rows, cols, int(array.chunks[0]), store_bytes(path), False, None)
    chunk_rows = chunk_rows_for(d)
    n = math.ceil(n / chunk_rows) * chunk_rows  # whole chunks
    tag = dataset_tag(n, d, seed, chunk_rows, writer)
    if is_finished_dataset(path, tag):
        print(f"reusing {path} ({n:,} x {d}, kept by an earlier run)", flush=True)
        return Dataset(path, n, d, chunk_rows, store_bytes(path), True, None)
    need = n * d * 8
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if need + 2**30 > free:
        raise SystemExit(
            f"not enough disk for {path}: the dataset takes {format_bytes(need)} and "
            f"{format_bytes(free)} are free. Free some space, pass --workdir on a larger "
            "disk, or lower --memory-limit (the dataset is 4x the workers' total limit)."
        )
    print(
        f"writing {path}: {n:,} x {d} float64 ({format_bytes(need)}, chunks of "
        f"{chunk_rows:,} rows) with {writer} ...",
        flush=True,
    )
    seconds = generate_dataset(path, n, d, seed, chunk_rows, writer)
    nbytes = store_bytes(path)
    print(
        f"  written in {seconds:.1f} s ({nbytes / MIB / seconds:.0f} MiB/s); on disk "
        f"{format_bytes(nbytes)}",
        flush=True,
    )
    return Dataset(path, n, d, chunk_rows, nbytes, True, seconds)


# -- memory of the workers ------------------------------------------------------------
class RssSampler:
    """Samples the RSS of some processes in a background thread; peaks per phase.

    ``with sampler.phase("iteration"): ...`` attributes the samples taken
    meanwhile to that phase; the overall peak covers everything.
    """

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_SECONDS) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.peaks: dict[str, dict[str, int]] = {}
        self.overall: dict[str, int] = dict.fromkeys(pids, 0)
        self.gone: set[str] = set()
        self.n_samples = 0
        self._phase: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        with self._lock:
            phase = self._phase
            for name, proc in self.procs.items():
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:  # the process died: a nanny restarted it, or it was killed
                    self.gone.add(name)
                    continue
                self.overall[name] = max(self.overall[name], rss)
                if phase is not None:
                    peaks = self.peaks.setdefault(phase, {})
                    peaks[name] = max(peaks.get(name, 0), rss)
            self.n_samples += 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            self._phase = name
        self.sample()
        try:
            yield
        finally:
            self.sample()
            with self._lock:
                self._phase = None


def worker_spill_state(dask_worker: Any) -> dict[str, Any]:
    """Run on each worker: spilled bytes now and ever, and its status."""
    data = dask_worker.data
    out: dict[str, Any] = {"status": str(dask_worker.status), "buffer": type(data).__name__}
    spilled = getattr(data, "spilled_total", None)
    out["spilled_now"] = int(spilled.disk) if spilled is not None else 0
    out["keys_on_disk"] = len(getattr(data, "slow", {}) or {})
    metrics = getattr(data, "cumulative_metrics", {})
    out["disk_write_count"] = int(metrics.get(("disk-write", "count"), 0))
    out["disk_write_bytes"] = int(metrics.get(("disk-write", "bytes"), 0))
    out["memory_limit"] = dask_worker.memory_manager.memory_limit
    return out


#: worker / nanny log lines that mean memory trouble
MEMORY_LOG_WORDS = ("paus", "spill", "unmanaged memory", "restart", "memory budget", "killed")


def memory_log_lines(client: Client) -> list[str]:
    lines = []
    for nanny in (False, True):
        for address, logs in client.get_worker_logs(n=1000, nanny=nanny).items():
            for level, message in logs:
                if level in ("DEBUG", "INFO") and "memory" not in message.lower():
                    continue  # e.g. "Run out-of-band function 'worker_spill_state'"
                if any(word in message.lower() for word in MEMORY_LOG_WORDS):
                    who = "nanny" if nanny else "worker"
                    lines.append(f"{who} {address} {level}: {message.splitlines()[0][:160]}")
    return lines


# -- one pass of each kind -------------------------------------------------------------
def starting_params(path: str, k: int, seed: int) -> Params:
    """Params of a short scikit-learn fit on the store's first rows: every contender's start."""
    rows = np.asarray(zarr.open_array(path, mode="r")[:INIT_ROWS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type="full", max_iter=10, random_state=seed)
        gm.fit(rows)
    return Params.from_covariances(gm.weights_, gm.means_, gm.covariances_, "full")


def dask_engine(X: Any, scheduler: Any = None) -> distmix.engines.DaskEngine:
    """A DaskEngine that reads the blocks on every pass (never persists them)."""
    import inspect

    kwargs: dict[str, Any] = {"scheduler": scheduler}
    if "persist" in inspect.signature(distmix.engines.DaskEngine).parameters:
        kwargs["persist"] = False
    return distmix.engines.DaskEngine(X, **kwargs)


@dataclass
class Outcome:
    stats: SuffStats
    params: Params


def iteration(engine: Any, params: Params) -> Outcome:
    """One EM iteration: one E-step pass over every block, then the M-step."""
    stats = distmix.em.e_step(engine, params)
    return Outcome(stats, distmix.mstep.m_step(stats, REG_COVAR, previous=params))


def read_once(X: Any) -> float:
    """Every block read and decoded once, reduced to one number."""
    return float(X.sum().compute())


def engine_read(engine: Any) -> float:
    """A pass of the engine's own graph (block tasks, tree) whose kernel only reads its
    block: the registered ``nonfinite`` task (one ``isfinite`` sweep, a count per
    block; engines run named tasks only, so no arbitrary kernel can stand in)."""
    return float(engine.reduce("nonfinite").count)


def rel_diff(a: Any, b: Any) -> float:
    """``max |a − b| / max |b|`` (normwise, so near-zero entries do not blow it up)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)


def outcome_diffs(a: Outcome, b: Outcome) -> dict[str, float]:
    return {
        "resp_sum": rel_diff(a.stats.resp_sum, b.stats.resp_sum),
        "x_sum": rel_diff(a.stats.x_sum, b.stats.x_sum),
        "second": rel_diff(a.stats.second, b.stats.second),
        "log_lik": rel_diff(a.stats.log_lik, b.stats.log_lik),
        "n_rows": rel_diff(a.stats.n_rows, b.stats.n_rows),
        "weights": rel_diff(a.params.weights, b.params.weights),
        "means": rel_diff(a.params.means, b.params.means),
        "covariances": rel_diff(a.params.covariances, b.params.covariances),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()  # no collector pause from the previous contender's garbage
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    repeats: int,
    before_each: Callable[[], None] | None = None,
    sampler: RssSampler | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """``repeats`` rounds of every contender, the order rotated each round.

    Returns the seconds of every repetition and each contender's last result.
    """
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, Any] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if before_each is not None:
                before_each()
            with sampler.phase(name) if sampler is not None else contextlib.nullcontext():
                seconds, last[name] = timed(contenders[name])
            times[name].append(seconds)
            print(f"    {name:<12} {seconds:8.3f} s", flush=True)
    return times, last


def spread(t: list[float]) -> float:
    return max(t) / min(t)


def reps(t: list[float]) -> str:
    return " ".join(f"{x:.3f}" if x < 1 else f"{x:.2f}" for x in t)


# -- the environment -------------------------------------------------------------------


def print_environment(workdir: str) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = psutil.virtual_memory()
    print(
        f"date: {datetime.date.today().isoformat()}   host: {cpu_model()}, {cores} cores, "
        f"{format_bytes(memory.total)} memory ({format_bytes(memory.available)} available)"
    )
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  dask {dask.__version__}  "
        f"distributed {distributed.__version__}  zarr {zarr.__version__}  "
        f"scikit-learn {sklearn.__version__}  distmix {getattr(distmix, '__version__', '?')}"
    )
    free = shutil.disk_usage(workdir).free
    print(f"workdir {workdir}: {format_bytes(free)} free")
    fractions = dask.config.get("distributed.worker.memory")
    print(
        "worker memory thresholds (fractions of the limit): "
        + "  ".join(f"{key}={fractions[key]}" for key in ("target", "spill", "pause", "terminate"))
    )
    print(f"load average before the run (1, 5, 15 min): {load_average()}")
    print()


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


# -- the three parts -------------------------------------------------------------------
@dataclass
class RatioResult:
    label: str
    n: int
    d: int
    k: int
    nbytes: int
    n_blocks: int
    times: dict[str, list[float]]
    cached_before: float | None = None
    cached_after: float | None = None

    @property
    def read(self) -> float:
        return statistics.median(self.times["read"])

    @property
    def iteration(self) -> float:
        return statistics.median(self.times["iteration"])

    @property
    def ratio(self) -> float:
        return self.iteration / self.read

    def median(self, name: str) -> float | None:
        return statistics.median(self.times[name]) if name in self.times else None


def measure_ratio(
    data: Dataset,
    k: int,
    repeats: int,
    seed: int,
    cold: bool,
    sampler: RssSampler,
    *,
    warm_up: bool,
    with_engine_read: bool = False,
) -> tuple[RatioResult, Outcome, Any, Params]:
    """Read vs iteration on ``data`` with K = ``k``; also returns the last iteration's outcome.

    ``with_engine_read`` adds a third contender, the E-step's graph with a
    kernel that only reads its block (:func:`engine_read`): what distmix's
    graph costs beyond ``X.sum()`` before any E-step arithmetic.
    """
    X = distmix.sources.dataset.open_dataset(data.path)
    params = starting_params(data.path, k, seed)
    engine = dask_engine(X)
    before_each = (lambda: evict_from_page_cache(data.path)) if cold else None
    contenders: dict[str, Callable[[], Any]] = {
        "read": lambda: read_once(X),
        "iteration": lambda: iteration(engine, params),
    }
    if with_engine_read:
        contenders["engine read"] = lambda: engine_read(engine)
    if warm_up:  # imports and page faults on the workers; the store into the page cache
        with sampler.phase("read"):
            read_once(X)
        with sampler.phase("iteration"):
            seconds, _ = timed(lambda: iteration(engine, params))
        print(f"    warm-up iteration {seconds:.3f} s", flush=True)
    cached_before = cached_fraction(data.path)
    times, last = interleaved(contenders, repeats, before_each, sampler)
    result = RatioResult(
        f"{data.n:,} x {data.d}, K={k}",
        data.n,
        data.d,
        k,
        data.nbytes,
        len(engine.block_rows),
        times,
        cached_before,
        cached_fraction(data.path),
    )
    return result, last["iteration"], X, params


@dataclass
class OverheadResult:
    block_rows: int
    n_blocks: int
    times: dict[str, list[float]]
    diff: float

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    @property
    def ratio(self) -> float:
        return self.median("dask") / self.median("local")


def measure_overhead(
    client: Client,
    n: int,
    d: int,
    k: int,
    block_rows_list: list[int],
    repeats: int,
    seed: int,
    sampler: RssSampler,
) -> list[OverheadResult]:
    """The same iteration in memory: LocalEngine here vs DaskEngine on the cluster, same blocks."""
    mixture = distmix.datasets.random_mixture(d, DATA_COMPONENTS, seed)
    chol = np.linalg.cholesky(mixture.covariances)
    step = chunk_rows_for(d)
    X = np.concatenate(
        [
            mixture_chunk(mixture, chol, i, min(step, n - lo), seed)
            for i, lo in enumerate(range(0, n, step))
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(k, covariance_type="full", max_iter=10, random_state=seed)
        gm.fit(X[:INIT_ROWS])
    params = Params.from_covariances(gm.weights_, gm.means_, gm.covariances_, "full")
    results = []
    for block_rows in block_rows_list:
        print(f"  in memory: {n:,} x {d}, K={k}, blocks of {block_rows:,} rows", flush=True)
        local = distmix.engines.LocalEngine(X, None, block_size=block_rows)
        with warnings.catch_warnings():
            # the array travels once, inside the graph, to be persisted: that is the point
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            dX = da.from_array(X, chunks=(block_rows, d)).persist()
        wait(dX)
        remote = dask_engine(dX)
        contenders: dict[str, Callable[[], Any]] = {
            "local": functools.partial(iteration, local, params),
            "dask": functools.partial(iteration, remote, params),
            # the same passes with a kernel that only reads its block: the fixed cost
            "local null": functools.partial(engine_read, local),
            "dask null": functools.partial(engine_read, remote),
        }
        with sampler.phase("in-memory"):
            for fn in contenders.values():  # warm-up
                fn()
            times, last = interleaved(contenders, repeats, None, None)
        diff = max(outcome_diffs(last["dask"], last["local"]).values())
        results.append(OverheadResult(block_rows, len(local.block_rows), times, diff))
        del remote, dX, contenders, last
        client.run(gc.collect)
    return results


@dataclass
class BlockCosts:
    """Seconds per block, one thread in this process: where an iteration's time can go."""

    rows: int
    k: int
    read: float
    summed: float
    estep: float
    estep_pieces: float
    piece_rows: int


def measure_block_costs(data: Dataset, k: int, seed: int, repeats: int = 5) -> BlockCosts:
    """Read one Zarr block, sum it, E-step it whole and in cache-sized pieces (median of 5).

    One thread and one BLAS thread, as on a worker with ``threads_per_worker=1``.
    """
    array = zarr.open_array(data.path, mode="r")
    reader = distmix.sources.zarr_arrays.ZarrRows(array, data.path)
    params = starting_params(data.path, k, seed)
    rows = data.chunk_rows
    piece = distmix.sources.blocks.default_block_rows(k, data.d)
    n_chunks = data.n // rows

    def med(fn: Callable[[int], Any]) -> float:
        seconds = []
        for i in range(repeats):
            start = time.perf_counter()
            fn(i)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    def read(i: int) -> np.ndarray:
        j = (7 * i + 3) % n_chunks  # a different chunk each time
        return reader[(slice(j * rows, (j + 1) * rows), slice(0, data.d))]

    block = read(0)
    with threadpoolctl.threadpool_limits(1):
        return BlockCosts(
            rows,
            k,
            med(read),
            med(lambda i: block.sum()),
            med(lambda i: distmix.tasks.estep_block(block, None, 0, params)),
            med(
                lambda i: [
                    distmix.tasks.estep_block(block[j : j + piece], None, j, params)
                    for j in range(0, rows, piece)
                ]
            ),
            piece,
        )


# -- the run ---------------------------------------------------------------------------
@dataclass
class Settings:
    """What the command line asked for, with the defaults of ``--quick`` applied."""

    args: argparse.Namespace
    limit: int
    main_rows: int
    crossover_bytes: int
    overhead_rows: int
    overhead_repeats: int

    @property
    def total_limit(self) -> int:
        return self.args.workers * self.limit


@dataclass
class Measured:
    """Everything a run measured, for the report."""

    pids_before: dict[str, int]
    pids_after: dict[str, int] | None = None
    block_costs: BlockCosts | None = None
    ratio_main: RatioResult | None = None
    diffs: dict[str, float] | None = None
    crossover: list[RatioResult] | None = None
    overhead: list[OverheadResult] | None = None
    spill: dict[str, dict[str, Any]] | None = None
    log_lines: list[str] | None = None
    killed: str | None = None


def measure_all(
    s: Settings,
    data: Dataset,
    client: Client,
    sampler: RssSampler,
    out: Measured,
    generated: list[str],
) -> None:
    """The parts, in order; fills ``out`` as it goes."""
    args = s.args
    print("[0] costs of one block in this process, one thread", flush=True)
    out.block_costs = measure_block_costs(data, args.components, args.seed)
    cache = "cold" if args.cold else "warm"
    print(f"[1] read vs iteration on the main dataset, K={args.components} ({cache} page cache)")
    out.ratio_main, cluster_outcome, X, params = measure_ratio(
        data,
        args.components,
        args.repeats,
        args.seed,
        args.cold,
        sampler,
        warm_up=not args.quick,
        with_engine_read=True,
    )
    print("[2] the same pass in this process (Dask's threaded scheduler, same blocks)", flush=True)
    with sampler.phase("in-process check"):
        seconds, in_process = timed(lambda: iteration(dask_engine(X, scheduler="threads"), params))
    print(f"    {seconds:.3f} s", flush=True)
    out.diffs = outcome_diffs(cluster_outcome, in_process)

    if not args.no_crossover:
        print(f"[3] crossover, on datasets of {format_bytes(s.crossover_bytes)}", flush=True)
        out.crossover = []
        for d in sorted({d for d, _ in args.pairs}):
            rows = math.ceil(s.crossover_bytes / (8 * d))
            path = os.path.join(args.workdir, f"distmix-ooc-{rows}x{d}-seed{args.seed}.zarr")
            small = ensure_dataset(path, rows, d, args.seed, args.writer)
            generated.append(small.path)
            for k in [k for d2, k in args.pairs if d2 == d]:
                print(f"  D={d} K={k}", flush=True)
                # no warm-up: the main part warmed the workers up, the store was just written
                result, _, _, _ = measure_ratio(
                    small, k, args.repeats, args.seed, args.cold, sampler, warm_up=False
                )
                out.crossover.append(result)

    if not args.no_overhead:
        print("[4] client overhead on in-memory data", flush=True)
        block_rows = sorted({distmix.sources.blocks.default_block_rows(8, 16), chunk_rows_for(16)})
        out.overhead = measure_overhead(
            client, s.overhead_rows, 16, 8, block_rows, s.overhead_repeats, args.seed, sampler
        )


def run(s: Settings, generated: list[str]) -> int:
    """Generate or open the data, start the cluster, measure, report; the exit status."""
    args = s.args
    data = ensure_dataset(
        args.path
        or os.path.join(
            args.workdir, f"distmix-ooc-{s.main_rows}x{args.features}-seed{args.seed}.zarr"
        ),
        s.main_rows,
        args.features,
        args.seed,
        args.writer,
        reuse_any=bool(args.path),
    )
    if data.generated_here:
        generated.append(data.path)
    over = data.n * data.d * 8 / s.total_limit
    if over >= MIN_DATA_OVER_LIMIT:
        note = ""
    elif args.quick and data.n * data.d * 8 >= MIN_DATA_OVER_LIMIT * s.limit:
        note = f"   (--quick: {MIN_DATA_OVER_LIMIT:g}x one worker's limit)"
    else:
        note = f"   BELOW the {MIN_DATA_OVER_LIMIT:g}x asked"
    print(
        f"main dataset: {data.n:,} x {data.d} float64 = {format_bytes(data.n * data.d * 8)} "
        f"= {over:.2f} x the workers' total limit ({args.workers} x {format_bytes(s.limit)})"
        + note,
        flush=True,
    )
    malloc_config: dict[str, Any] = {}
    if args.worker_malloc == "glibc":
        # None unsets it (distributed.nanny._get_env_variables); the environment the
        # workers inherit must not carry it either
        malloc_config = {f"{PRE_SPAWN_ENVIRON}.MALLOC_TRIM_THRESHOLD_": None}
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with (
        dask.config.set(malloc_config),
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=s.limit,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        trim = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        print(f"cluster: {client.scheduler.address}, dashboard {client.dashboard_link}")
        for address, pid in pids.items():
            print(
                f"  worker {address} pid {pid}, memory limit {format_bytes(s.limit)}, "
                f"MALLOC_TRIM_THRESHOLD_={trim[address] or '<unset>'}"
            )
        print(flush=True)
        out = Measured(pids)
        with RssSampler({**pids, "client": os.getpid()}) as sampler:
            try:
                measure_all(s, data, client, sampler, out, generated)
            except KilledWorker as err:
                out.killed = str(err)
                print(f"\nKilledWorker: {err}", flush=True)
        out.spill = client.run(worker_spill_state)
        out.pids_after = client.run(os.getpid)
        out.log_lines = memory_log_lines(client)
    return report(s, out, sampler)


# -- the report ------------------------------------------------------------------------
def report_ratio(s: Settings, r: RatioResult) -> None:
    args = s.args
    print(
        f"read vs one EM iteration on the LocalCluster ({args.workers} workers x 1 thread, "
        f"{format_bytes(s.limit)} each), {'cold' if args.cold else 'warm'} page cache, "
        f"median of {args.repeats}:"
    )
    print(
        f"{'dataset (N x D, K)':<28}{'on disk':>11}{'blocks':>8}{'read s':>9}{'iter s':>9}"
        f"{'read GiB/s':>12}{'iter/read':>11}  (<= {TARGET_ITER_OVER_READ})"
    )
    print("-" * 96)
    print(
        f"{r.label:<28}{format_bytes(r.nbytes):>11}{r.n_blocks:>8}{r.read:>9.2f}"
        f"{r.iteration:>9.2f}{r.nbytes / 2**30 / r.read:>12.2f}{r.ratio:>11.2f}  "
        f"{verdict(r.ratio, TARGET_ITER_OVER_READ)}"
    )
    for name, t in r.times.items():
        print(f"  {name:<12} every repetition (s): {reps(t)}   spread {spread(t):.2f}")
    engine = r.median("engine read")
    if engine is not None:
        print(
            f"  engine read (the iteration's graph, kernel = the nonfinite task): {engine:.2f} s = "
            f"{engine / r.read:.2f} x read; the E-step's arithmetic is the other "
            f"{r.iteration - engine:.2f} s"
        )
    if r.cached_before is not None and r.cached_after is not None:
        print(
            f"  share of the store in the page cache: {r.cached_before:.0%} before the timed "
            f"rounds, {r.cached_after:.0%} after"
        )
    print()


def report_block_costs(c: BlockCosts, data_d: int) -> None:
    mib = c.rows * data_d * 8 / MIB
    print(
        f"one block of {c.rows:,} rows x {data_d} ({mib:.0f} MiB) in this process, one thread, "
        f"median of 5:"
    )
    print(
        f"  read + decode {c.read * 1e3:.1f} ms ({mib / c.read:.0f} MiB/s)   sum "
        f"{c.summed * 1e3:.1f} ms   E-step K={c.k}: whole block {c.estep * 1e3:.1f} ms "
        f"({mib / c.estep:.0f} MiB/s), in pieces of {c.piece_rows:,} rows "
        f"{c.estep_pieces * 1e3:.1f} ms"
    )
    print(
        f"  so without any scheduling cost an iteration would take "
        f"{(c.read + c.estep) / c.read:.1f} x a read ({(c.read + c.estep_pieces) / c.read:.1f} "
        "x with cache-sized pieces)"
    )
    print()


def report_crossover(s: Settings, results: list[RatioResult]) -> None:
    print(
        f"crossover (iter/read ~1: I/O bound; >>1: compute bound), datasets of "
        f"{format_bytes(s.crossover_bytes)} = {s.crossover_bytes / s.total_limit:.2f} x the "
        f"workers' total limit ({s.crossover_bytes / s.limit:.2f} x one worker's), median of "
        f"{s.args.repeats}:"
    )
    print(
        f"{'D':>4}{'K':>5}{'N':>13}{'blocks':>8}{'read s':>9}{'iter s':>9}{'iter/read':>11}"
        f"{'E-step s/GiB':>14}{'I/O bound below':>17}{'spread':>8}  cached"
    )
    print("-" * 106)
    for r in results:
        beyond_read = (r.iteration - r.read) / (r.nbytes / 2**30)
        # the store throughput at which the read alone would take beyond_read / (target - 1)
        io_bound_below = (TARGET_ITER_OVER_READ - 1) / beyond_read * 1024 if beyond_read > 0 else 0
        worst = max(spread(r.times["read"]), spread(r.times["iteration"]))
        cached = "" if r.cached_before is None else f"{r.cached_before:.0%}"
        print(
            f"{r.d:>4}{r.k:>5}{r.n:>13,}{r.n_blocks:>8}{r.read:>9.2f}{r.iteration:>9.2f}"
            f"{r.ratio:>11.2f}{beyond_read:>14.2f}{io_bound_below:>11.0f} MiB/s{worst:>8.2f}"
            f"  {cached:>6}"
        )
    print(
        "  E-step s/GiB: (iteration - read) per GiB of rows, the compute an iteration adds.\n"
        f"  I/O bound below: the store throughput under which iter/read <= "
        f"{TARGET_ITER_OVER_READ} (the compute stays, the read slows down: a worker's one "
        "thread does not overlap them).\n"
        "  spread: the worse max/min of read and iteration; cached: share of the store in the "
        "page cache before the timed rounds."
    )
    io_bound = [f"D={r.d} K={r.k}" for r in results if r.ratio <= TARGET_ITER_OVER_READ]
    lowest = min(results, key=lambda r: r.ratio)
    print(
        f"  I/O bound here (iter/read <= {TARGET_ITER_OVER_READ}): "
        + (", ".join(io_bound) if io_bound else "none")
        + f"; lowest iter/read {lowest.ratio:.2f} at D={lowest.d} K={lowest.k}"
    )
    print()


def report_parts(s: Settings, r: RatioResult, overhead: list[OverheadResult]) -> None:
    """The out-of-core iteration against its parts: the in-memory iteration of as many
    rows (the local engine's, per row, on the largest blocks measured: the Zarr chunk's)
    plus one read of the store. What is left is what going out of core adds."""
    largest = max(overhead, key=lambda o: o.block_rows)
    per_row = largest.median("local") / s.overhead_rows
    in_memory = per_row * r.n
    parts = in_memory + r.read
    ratio = r.iteration / parts
    print(
        f"out-of-core iteration against its parts ({r.label}): in-memory iteration "
        f"{per_row * 1e9:.0f} ns/row (local engine, {largest.block_rows:,}-row blocks) x "
        f"{r.n:,} rows = {in_memory:.2f} s, + one read {r.read:.2f} s = {parts:.2f} s; "
        f"iteration {r.iteration:.2f} s"
    )
    print(
        f"  iteration / (in-memory iteration + read) = {ratio:.2f}  (<= "
        f"{TARGET_ITER_OVER_PARTS}) {verdict(ratio, TARGET_ITER_OVER_PARTS)};  iteration / "
        f"read = {r.ratio:.2f}  (<= {TARGET_ITER_OVER_READ}) "
        f"{verdict(r.ratio, TARGET_ITER_OVER_READ)}"
    )
    print()


def report_overhead(s: Settings, results: list[OverheadResult]) -> list[str]:
    failures = []
    print(
        f"client overhead on in-memory data ({s.overhead_rows:,} x 16, K=8), median of "
        f"{s.overhead_repeats}:"
    )
    print(
        f"{'blocks (n x rows)':<20}{'local s':>9}{'dask s':>9}{'dask/local':>12}"
        f"  (<= {TARGET_DASK_OVER_LOCAL}){'local null s':>15}{'dask null s':>13}  differ by"
    )
    print("-" * 100)
    for o in results:
        print(
            f"{f'{o.n_blocks} x {o.block_rows}':<20}{o.median('local'):>9.3f}"
            f"{o.median('dask'):>9.3f}{o.ratio:>12.3f}  {verdict(o.ratio, TARGET_DASK_OVER_LOCAL)}"
            f"{o.median('local null'):>19.3f}{o.median('dask null'):>13.3f}  {o.diff:9.1e}"
        )
        for name, t in o.times.items():
            print(f"  {name:<11} every repetition (s): {reps(t)}   spread {spread(t):.2f}")
        if o.diff > s.args.tolerance:
            failures.append(f"in-memory engines disagree by {o.diff:.1e}")
    print(
        "  null: the same pass with a kernel that only reads its block, i.e. the engine's fixed "
        "cost per pass"
    )
    print()
    return failures


def report_memory(s: Settings, out: Measured, sampler: RssSampler) -> list[str]:
    failures = []
    print(
        f"peak RSS per process and phase (sampled every {SAMPLE_SECONDS * 1000:.0f} ms, "
        f"{sampler.n_samples:,} samples); worker limit {format_bytes(s.limit)}:"
    )
    phases = list(sampler.peaks)
    print(
        f"{'process':<24}" + "".join(f"{p:>18}" for p in phases) + f"{'overall':>12}{'of limit':>9}"
    )
    for name in sampler.procs:
        overall = sampler.overall[name]
        share = "" if name == "client" else f"{overall / s.limit:.0%}"
        print(
            f"{name:<24}"
            + "".join(f"{sampler.peaks[p].get(name, 0) / MIB:>14.0f} MiB" for p in phases)
            + f"{overall / MIB:>8.0f} MiB{share:>9}"
        )
        if name != "client" and overall >= s.limit:
            failures.append(f"worker {name} peaked at {format_bytes(overall)}, over its limit")
    print()
    print("spilling and restarts:")
    for address, state in (out.spill or {}).items():
        print(
            f"  {address}: {state['buffer']}, status {state['status']}, on disk now "
            f"{format_bytes(state['spilled_now'])} ({state['keys_on_disk']} keys), spilled "
            f"{state['disk_write_count']} times / {format_bytes(state['disk_write_bytes'])} in all"
        )
        if state["disk_write_count"] or state["spilled_now"]:
            failures.append(f"worker {address} spilled to disk")
    restarted = out.pids_after != out.pids_before or bool(sampler.gone)
    print(
        f"  worker pids before {sorted(out.pids_before.values())}, after "
        f"{sorted((out.pids_after or {}).values())}: "
        + ("RESTARTED" if restarted else "no restart")
    )
    if restarted:
        failures.append("a worker was restarted or died")
    lines = out.log_lines or []
    print(f"  worker and nanny log lines about pausing, spilling, restarts: {len(lines)}")
    for line in lines[:10]:
        print(f"    {line}")
    if lines:
        failures.append("workers logged memory trouble")
    print(f"  KilledWorker: {out.killed or 'none'}")
    if out.killed:
        failures.append(f"KilledWorker: {out.killed}")
    print()
    return failures


def report(s: Settings, out: Measured, sampler: RssSampler) -> int:
    print()
    failures: list[str] = []
    if out.block_costs is not None and out.ratio_main is not None:
        report_block_costs(out.block_costs, out.ratio_main.d)
    if out.ratio_main is not None:
        report_ratio(s, out.ratio_main)
    if out.crossover:
        report_crossover(s, out.crossover)
    if out.overhead:
        failures += report_overhead(s, out.overhead)
    if out.overhead and out.ratio_main is not None:
        report_parts(s, out.ratio_main, out.overhead)
    failures += report_memory(s, out, sampler)
    if out.diffs is not None:
        print(
            "cluster vs the in-process pass over the same blocks, max |a - b| / max |b| "
            f"(tolerance {s.args.tolerance:g}):"
        )
        print("  " + "   ".join(f"{name} {value:.1e}" for name, value in out.diffs.items()))
        worst = max(out.diffs.values())
        if worst > s.args.tolerance:
            failures.append(f"cluster and in-process statistics differ by {worst:.1e}")
        print()
    print(f"client process peak RSS: {format_bytes(sampler.overall['client'])}")
    print(f"load average after the run (1, 5, 15 min): {load_average()}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


# -- main --------------------------------------------------------------------------------
def parse_pairs(text: str) -> list[tuple[int, int]]:
    """``"16:2,64:8"`` → ``[(16, 2), (64, 8)]``."""
    pairs = []
    for item in filter(None, text.split(",")):
        d, _, k = item.partition(":")
        if not (d.isdigit() and k.isdigit() and int(d) > 0 and int(k) > 0):
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r}: give D:K pairs of positive integers separated by "
                f"commas, e.g. {DEFAULT_PAIRS}"
            )
        pairs.append((int(d), int(k)))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 x 512 MiB workers, a 2 GiB dataset (4x one worker's limit), crossover "
        f"pairs {QUICK_PAIRS} on 640 MiB, no warm-ups: a smoke run of a few minutes",
    )
    parser.add_argument(
        "--rows",
        type=int,
        help="rows of the main dataset (default: 4x the "
        "workers' total memory limit, in whole chunks)",
    )
    parser.add_argument("--features", type=int, default=16, help="D of the main dataset (16)")
    parser.add_argument("--components", type=int, default=8, help="K fitted on it (8)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--memory-limit", help="memory limit per worker (default 1GiB; --quick: 512MiB)"
    )
    parser.add_argument(
        "--path", help="the main dataset: used as it is if it exists, else generated there"
    )
    parser.add_argument(
        "--workdir",
        default=tempfile.gettempdir(),
        help="where generated datasets go (default: the temp dir)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated datasets (a later run reuses them)"
    )
    parser.add_argument(
        "--writer",
        choices=("chunks", "write_zarr"),
        default="chunks",
        help="chunks: create_zarr_array filled by this script (fast); "
        "write_zarr: distmix.datasets.write_zarr",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (3)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the store from the page cache before every timed repetition",
    )
    parser.add_argument(
        "--pairs",
        type=parse_pairs,
        help=f"(D, K) pairs of the crossover table (default {DEFAULT_PAIRS}; "
        f"--quick: {QUICK_PAIRS})",
    )
    parser.add_argument(
        "--crossover-size",
        help="bytes of each crossover dataset (default 1.25x the workers' "
        "total limit; --quick: 1.25x one worker's)",
    )
    parser.add_argument("--no-crossover", action="store_true", help="skip the crossover table")
    parser.add_argument(
        "--no-overhead", action="store_true", help="skip the in-memory client-overhead measurement"
    )
    parser.add_argument(
        "--overhead-rows",
        type=int,
        default=OVERHEAD_ROWS,
        help=f"rows of the in-memory array ({OVERHEAD_ROWS:,}; --quick: / 4)",
    )
    parser.add_argument(
        "--worker-malloc",
        choices=("dask", "glibc"),
        default="glibc",
        help="glibc (default, as distmix's bundled local.yaml starts its workers): "
        "MALLOC_TRIM_THRESHOLD_ unset, so glibc's dynamic mmap threshold works; dask: the "
        "workers get distributed's default MALLOC_TRIM_THRESHOLD_=65536",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the start")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-10,
        help="largest relative difference accepted between the cluster's "
        "and the in-process statistics (1e-10)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}.")
    if args.pairs is None:
        args.pairs = parse_pairs(QUICK_PAIRS if args.quick else DEFAULT_PAIRS)

    limit = parse_bytes(args.memory_limit or ("512MiB" if args.quick else "1GiB"))
    total_limit = args.workers * limit
    d = args.features
    # --quick: 4x one worker's limit (2 GiB), so that the run takes minutes, not a quarter hour
    main_rows = args.rows or math.ceil(
        MIN_DATA_OVER_LIMIT * (limit if args.quick else total_limit) / (8 * d)
    )
    crossover_bytes = (
        parse_bytes(args.crossover_size)
        if args.crossover_size
        else int(CROSSOVER_OVER_LIMIT * (limit if args.quick else total_limit))
    )
    overhead_rows = (
        args.overhead_rows // 4
        if args.quick and args.overhead_rows == OVERHEAD_ROWS
        else args.overhead_rows
    )
    os.makedirs(args.workdir, exist_ok=True)

    print_environment(args.workdir)
    settings = Settings(
        args, limit, main_rows, crossover_bytes, overhead_rows, max(args.repeats, 5)
    )
    generated: list[str] = []
    try:
        return run(settings, generated)
    finally:
        for path in dict.fromkeys(generated):
            if args.keep:
                print(f"kept {path}")
            else:
                shutil.rmtree(path, ignore_errors=True)
                print(f"deleted {path}")


if __name__ == "__main__":
    sys.exit(main())
