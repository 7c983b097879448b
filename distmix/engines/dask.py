"""The Dask engine: one task per block of a dask array, then a tree reduction.

Per call the graph is: one key holding the arguments (the Params of the
iteration, put in the graph once, that every block task depends on), one task
per row block, and ``tree_depth`` levels of additions with fan-in
``split_every``. It is computed with a single ``dask.compute``, on whatever
scheduler is active: the threaded default, or a ``distributed.Client``
(threads or processes). Arguments are never ``client.scatter``-ed: scattered
data are lost for good when their worker dies, whereas a graph key is
recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import dask
import dask.array as da
import dask.base
import dask.callbacks
import dask.core
import dask.local
import dask.optimization
import dask.threaded
import distributed
import distributed.diagnostics.progressbar
import psutil
from dask.array.utils import meta_from_array

from distmix import progress
from distmix._blas import one_blas_thread
from distmix.devices import is_host_array, to_host
from distmix.engines.base import (
    WindowedEngine,
    block_offsets,
    check_row_offsets,
    ready,
    window_offsets,
)
from distmix.engines.local import LocalEngine, concat_rows
from distmix.reduce import DEFAULT_SPLIT_EVERY, check_split_every, dask_tree_sum
from distmix.tasks import TaskName, check_arguments, get_task, run_block, run_map_block

_call_ids = itertools.count()


def _blas_limit_for(scheduler: Any, graph: Any) -> Any:
    """One BLAS thread per task when the tasks share this process's cores.

    The threaded scheduler already runs one block per core; letting BLAS start
    its own threads in every task would oversubscribe the cores (measured: 2×
    slower on 2 cores). Distributed workers set this themselves.
    """

    if dask.base.get_scheduler(scheduler=scheduler, collections=[graph]) is dask.threaded.get:
        return one_blas_thread()
    return nullcontext()


class _PassProgress(dask.callbacks.Callback):
    """Counts the block tasks of one pass on Dask's local schedulers for the reporter."""

    def __init__(self, name: str, reporter: progress.ProgressReporter) -> None:
        super().__init__()
        self.name, self.reporter, self.done = name, reporter, 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        if isinstance(key, tuple) and key[:2] == (self.name, "block"):
            self.done += 1
            self.reporter.blocks_done(self.done)


class _ClusterPassProgress(distributed.diagnostics.progressbar.TextProgressBar):
    """The scheduler's count of a pass's finished tasks (block reads and additions),
    forwarded to the reporter as blocks: it draws nothing itself."""

    def __init__(self, future: Any, n_blocks: int, reporter: progress.ProgressReporter) -> None:
        self.n_blocks, self.reporter = n_blocks, reporter
        super().__init__([future], interval="200ms")

    def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:
        fraction = (1 - remaining / all) if all else 1.0
        self.reporter.blocks_done(fraction * self.n_blocks)

    def _draw_stop(self, **kwargs: Any) -> None:
        pass


def _compute_reporting(graph: Any, scheduler: Any, name: str, n_blocks: int) -> Any:
    """``dask.compute(graph)`` (one computation) telling the reporter how many of the
    pass's ``n_blocks`` blocks are done."""
    reporter = progress.current()
    reporter.begin_pass(n_blocks)
    client = _default_client(scheduler)
    if client is not None and dask.base.get_scheduler(collections=[graph]) == client.get:
        future = client.compute(graph)  # still one computation for the pass
        _ClusterPassProgress(future, n_blocks, reporter)
        return future.result()
    with _PassProgress(name, reporter), _blas_limit_for(scheduler, graph):
        (result,) = dask.compute(graph, scheduler=scheduler)
    return result


#: seconds :func:`parallel_blocks` waits for a first worker to join a client's cluster
WORKER_WAIT_S = 60.0


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def parallel_blocks() -> int:
    """Blocks that run at once on Dask: the workers' threads of the active distributed
    client, else this machine's cores (the threaded scheduler).

    A cluster without any worker yet (a job-queue cluster whose jobs are still
    queued, say) is waited for, up to ``WORKER_WAIT_S``, until one joins;
    otherwise a stream's default window would be 1 on one run and the cluster's
    threads on the next. An adaptive cluster starts workers only once there is
    work, so it is not waited for. Still no worker: 1, with a warning.
    """
    try:
        client = distributed.default_client()
    except ValueError:
        return _cores()
    adaptive = getattr(getattr(client, "cluster", None), "_adaptive", None) is not None
    if not client.nthreads() and not adaptive:
        with contextlib.suppress(TimeoutError):
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    threads = sum(client.nthreads().values())
    if not threads:
        why = "is adaptive" if adaptive else f"had none within {WORKER_WAIT_S:g} s"
        warnings.warn(
            f"the Dask cluster of {client.scheduler.address} has no worker yet (it "
            f"{why}): streaming one block per update. Pass window= to choose.",
            UserWarning,
            stacklevel=4,
        )
    return max(1, threads)


def cluster_memory(scheduler: Any = None) -> float:
    """Bytes of memory the active scheduler's workers may use.

    A distributed client: the sum of its workers' memory limits (a worker
    without a limit counts as this machine's total memory). Otherwise: this
    machine's available memory.
    """

    if scheduler is None:
        try:
            client = distributed.default_client()
        except (ImportError, ValueError):
            client = None
        if client is not None:
            workers = client.scheduler_info()["workers"].values()
            total = psutil.virtual_memory().total
            return float(sum(w.get("memory_limit") or total for w in workers))
    return float(psutil.virtual_memory().available)


class WorkerMemoryError(ValueError):
    """A worker that would run blocks cannot hold the blocks it would run at once."""


class WorkerEnvironmentError(ImportError):
    """A worker could not load distmix (or measure its memory): it could run no block."""


@dataclasses.dataclass(frozen=True)
class WorkerMemory:
    """What the scheduler says of one worker's memory.

    ``limit`` is 0 for a worker without a memory limit; ``used`` is the worker
    process's memory now (its ``metrics["memory"]``); ``nthreads`` is how many
    blocks it may process at once.
    """

    address: str
    limit: float
    used: float
    nthreads: int = 1

    @classmethod
    def from_info(cls, address: str, info: dict[str, Any]) -> WorkerMemory:
        """From one entry of ``client.scheduler_info()["workers"]``."""
        return cls(
            address=str(address),
            limit=float(info.get("memory_limit") or 0),
            used=float((info.get("metrics") or {}).get("memory") or 0),
            nthreads=max(1, int(info.get("nthreads") or 1)),
        )

    def room(self) -> float:
        """Bytes its tasks may still allocate before the nanny restarts the worker (inf: no limit).

        Zero for a worker already past the fraction of its limit at which it
        pauses: it would never start a block (and the scheduler gives it none).
        """
        if not self.limit:
            return math.inf
        if self.used >= pause_fraction() * self.limit:
            return 0.0
        return terminate_fraction() * self.limit - self.used


def terminate_fraction() -> float:
    """The fraction of its memory limit at which a nanny restarts its worker (Dask's config)."""

    value = dask.config.get("distributed.worker.memory.terminate", 0.95)
    return float(value) if value else 1.0


def pause_fraction() -> float:
    """The fraction of its memory limit at which a worker stops starting tasks (Dask's config)."""

    value = dask.config.get("distributed.worker.memory.pause", 0.8)
    return float(value) if value else 1.0


def _loaded_memory_probe() -> Callable[[], float | str]:
    """The function ``client.run`` sends to every worker to measure it.

    Defined inside this function so that cloudpickle sends its code (a function
    of a module is sent by name, and a worker without distmix could not even
    load it, let alone say so).
    """

    def loaded_worker_memory() -> float | str:
        """Load what every block task loads, then return its process's memory; a
        failure to load comes back as ``"ExceptionType: message"``, so that it cannot
        be mistaken for a worker that died (a worker out of memory, which is full,
        raises its ``MemoryError``)."""
        try:
            import psutil

            import distmix.tasks  # (with NumPy, SciPy, scikit-learn: ~110 MiB)

            # the compiled kernels too, where this worker's blocks would run them
            distmix.tasks.load_kernels()

            return float(psutil.Process().memory_info().rss)
        except MemoryError:
            raise
        except Exception as error:
            return f"{type(error).__name__}: {error}"

    return loaded_worker_memory


def _died(error: BaseException) -> bool:
    """Whether ``client.run`` failed on a worker because the worker died or was killed.

    A connection that closes, is refused or times out is an ``OSError``
    (``CommClosedError``, ``ConnectionError``, ``TimeoutError``); a worker out
    of memory raises ``MemoryError``. Anything else was raised by the worker.
    """
    return isinstance(error, (OSError, MemoryError))


def measured_workers(info: dict[str, dict[str, Any]], loaded: dict[str, Any]) -> list[WorkerMemory]:
    """The workers of ``scheduler_info()["workers"]`` with the memory they use once loaded.

    ``loaded`` maps a worker's address to what ``client.run`` returned for it:
    the process's memory after loading distmix (the worker uses at least that),
    nothing (a worker without a memory limit is not measured), a connection
    error or ``MemoryError`` (the worker died or was killed: it counts as full,
    as does a limited worker missing from ``loaded``), or anything else, which
    the worker raised: :class:`WorkerEnvironmentError`, naming it.
    """
    out = []
    for address, entry in info.items():
        worker = WorkerMemory.from_info(address, entry)
        measured = loaded.get(address)
        if isinstance(measured, str) or (
            isinstance(measured, BaseException) and not _died(measured)
        ):
            # an exception raised on the worker reaches us as Exception("Type('message')")
            what = str(measured)
            if isinstance(measured, BaseException) and type(measured) is not Exception:
                what = f"{type(measured).__name__}: {measured}"
            raise WorkerEnvironmentError(
                f"Dask worker {address} cannot load distmix, which every block task needs "
                f"({' '.join(str(what).split())}): install distmix, the version of this client "
                f"({_version()}), in the environment of every worker, or connect to workers that "
                "have it."
            )
        if isinstance(measured, BaseException) or (measured is None and worker.limit):
            measured = worker.limit  # died or killed while loading: it holds nothing
        if measured is not None:
            worker = dataclasses.replace(worker, used=max(worker.used, float(measured)))
        out.append(worker)
    return out


def _version() -> str:

    try:
        return version("distmix")
    except PackageNotFoundError:
        return "unknown"


#: seconds a measurement of the workers is reused, for the same scheduler and workers
MEASUREMENT_TTL_S = 45.0


@dataclasses.dataclass(frozen=True)
class _Measurement:
    at: float  # time.monotonic() of the client.run
    loaded: dict[str, Any]  # what measured_workers takes
    workers: tuple[WorkerMemory, ...]  # as last seen, for engines that only read the cache


#: (scheduler address, sorted worker addresses) -> their last measurement
_measured: dict[tuple[str, tuple[str, ...]], _Measurement] = {}
_measured_lock = threading.Lock()


def _on_cluster(scheduler: Any) -> bool:
    """Whether a compute with ``scheduler`` (``None``: the active default) runs on a
    distributed cluster."""
    get = dask.base.get_scheduler(scheduler=scheduler)
    return isinstance(getattr(get, "__self__", None), distributed.Client)


def _threads_beside_reading() -> int:
    """Threads for a window's blocks while the next window is read: one core is left
    to the reading (zarr reads every chunk on one event-loop thread, holding the
    GIL for much of it). Measured on 2 cores, a 2,000,000 × 16 Zarr stream, K = 8:
    one block thread 0.63 s a pass, two 0.73 s (interleaved runs, medians of 8)."""
    return max(1, _cores() - 1)


_READ_AHEAD: list[ThreadPoolExecutor] = []
_READ_AHEAD_LOCK = threading.Lock()


def _read_ahead_pool() -> ThreadPoolExecutor:
    """The one thread that reads streams' next windows on the local schedulers (made
    on first use; its computes run on the scheduler's own pool)."""
    with _READ_AHEAD_LOCK:
        if not _READ_AHEAD:
            _READ_AHEAD.append(ThreadPoolExecutor(1, thread_name_prefix="distmix-read-ahead"))
        return _READ_AHEAD[0]


def _default_client(scheduler: Any) -> Any:
    if scheduler is not None:
        return None
    try:
        return distributed.default_client()
    except (ImportError, ValueError):
        return None


def _scheduler_address(client: Any) -> str:
    return str(getattr(client.scheduler, "address", None) or id(client))


def workers_memory(scheduler: Any = None, *, measure: bool = True) -> list[WorkerMemory] | None:
    """The active distributed client's workers, or ``None`` without one (or with ``scheduler``).

    A worker's memory in use is measured after it has loaded distmix, which
    its first block task does anyway: a fresh worker process holds about 60 MiB,
    one that has loaded distmix's kernels about 170 MiB, before any block. That
    measurement (one ``client.run`` on the workers that have a memory limit) is
    reused for :data:`MEASUREMENT_TTL_S` seconds while the scheduler has the
    same workers; the scheduler's current figures are read every time.

    ``measure=False`` asks nothing of the scheduler or the workers: the workers
    as last measured on this scheduler within :data:`MEASUREMENT_TTL_S`, else
    ``None``.

    Raises
    ------
    WorkerEnvironmentError
        When a worker cannot load distmix (:func:`measured_workers`).
    """
    client = _default_client(scheduler)
    if client is None:
        return None
    address = _scheduler_address(client)
    if not measure:
        with _measured_lock:
            fresh = [
                m
                for (where, _), m in _measured.items()
                if where == address and time.monotonic() - m.at < MEASUREMENT_TTL_S
            ]
        return list(max(fresh, key=lambda m: m.at).workers) if fresh else None
    info = client.scheduler_info()["workers"]
    key = (address, tuple(sorted(info)))
    with _measured_lock:
        last = _measured.get(key)
    if last is not None and time.monotonic() - last.at < MEASUREMENT_TTL_S:
        at, loaded = last.at, last.loaded
    else:
        limited = [a for a, entry in info.items() if entry.get("memory_limit")]
        at = time.monotonic()
        loaded = (
            client.run(_loaded_memory_probe(), workers=limited, on_error="return")
            if limited
            else {}
        )
    workers = measured_workers(info, loaded)
    with _measured_lock:
        for stale in [k for k, m in _measured.items() if at - m.at >= MEASUREMENT_TTL_S]:
            del _measured[stale]
        _measured[key] = _Measurement(at, loaded, tuple(workers))
    return workers


#: safety margin on the estimate of a block's working memory: allocator slack, the
#: fingerprint's temporaries, the result of the previous block not yet released
_WORKING_MARGIN = 1.25


def block_working_bytes(
    n_rows: int,
    n_features: int,
    itemsize: int,
    n_components: int | None = None,
    covariance_type: str | None = None,
) -> float:
    """Bytes a worker needs to process one block of ``n_rows`` rows, estimated from above.

    The block as read, four float64 copies of it (the cast, the non-finite mask,
    a centred and a whitened copy), six (K, n) float64 arrays (log-densities,
    their exponentials, responsibilities and temporaries), and for ``diag`` and
    ``spherical`` (or an unknown type) the (K, n, D) centred stack and its
    squares of the batched path (``full`` and ``tied`` go component by component
    on NumPy: see ``distmix.estep``), all times a margin of 25 %.
    """
    k = max(1, n_components or 1)
    n = float(n_rows)
    f64 = n * n_features * 8.0
    stack = 0.0 if covariance_type in ("full", "tied") else 2.0 * k * f64
    return _WORKING_MARGIN * (n * n_features * itemsize + 4.0 * f64 + 6.0 * k * n * 8.0 + stack)


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


def _running(workers: list[WorkerMemory]) -> list[WorkerMemory]:
    """The workers the scheduler will give blocks to: all but those past their pause
    threshold (all of them when every one is: then the fit could never run)."""
    return [w for w in workers if w.room() > 0] or list(workers)


def _at_once(worker: WorkerMemory, n_blocks: int) -> int:
    """How many blocks ``worker`` may process at the same time: one per thread."""
    return max(1, min(worker.nthreads, n_blocks))


def rows_that_fit(
    workers: list[WorkerMemory],
    n_features: int,
    itemsize: int,
    n_components: int | None = None,
    covariance_type: str | None = None,
) -> int | None:
    """The most rows per block that every worker can process with all its threads busy.

    Blocks of this many rows pass :func:`check_blocks_fit` however many they
    are. ``None`` when no worker that runs blocks has a memory limit (any block
    fits); ``0`` when some worker has no room for even one row per thread.
    """
    limited = [w for w in _running(workers) if w.limit]
    if not limited:
        return None
    per_row = block_working_bytes(1, n_features, itemsize, n_components, covariance_type)
    room = min(w.room() / w.nthreads for w in limited)
    return max(0, int(room // per_row))


def check_blocks_fit(
    workers: list[WorkerMemory],
    block_rows: tuple[int, ...],
    n_features: int,
    itemsize: int,
    n_components: int | None = None,
    covariance_type: str | None = None,
) -> None:
    """Raise :class:`WorkerMemoryError` unless every worker can hold the blocks it runs at once.

    Blocks go to every worker that is not paused, and a worker with ``nthreads``
    threads processes up to ``min(nthreads, len(block_rows))`` of them at the
    same time. It holds them when its current memory plus that many times the
    working memory of the largest block (:func:`block_working_bytes`) stays
    below the fraction of its limit at which its nanny restarts it. Workers
    without a limit hold any block. Without this check such a fit fails after
    minutes with ``KilledWorker``, the workers having died on the same blocks.
    """
    if not workers or not block_rows:
        return
    largest, n_blocks = max(block_rows), len(block_rows)
    need = block_working_bytes(largest, n_features, itemsize, n_components, covariance_type)
    short = [w for w in _running(workers) if need * _at_once(w, n_blocks) > w.room()]
    if not short:
        return
    worker = min(short, key=lambda w: w.room() / _at_once(w, n_blocks))
    at_once = _at_once(worker, n_blocks)
    fits = rows_that_fit(workers, n_features, itemsize, n_components, covariance_type) or 0
    advice = (
        f"at most about {fits:,} rows per block would fit"
        if fits
        else "not even a small block fits beside what it already uses"
    )
    threads = f"{worker.nthreads} thread{'s' if worker.nthreads != 1 else ''}"
    blocks = f"{at_once} block{'s' if at_once != 1 else ''}"
    raise WorkerMemoryError(
        f"Dask worker {worker.address} cannot hold the blocks it would process: the largest "
        f"block ({largest:,} rows × {n_features} features, "
        f"{_mib(largest * n_features * itemsize)} as read) needs about {_mib(need)} while it "
        f"is processed, and with {threads} the worker processes up to {blocks} at once "
        f"({_mib(need * at_once)}), but it has a memory limit of {_mib(worker.limit)} and "
        f"already uses {_mib(worker.used)} (its nanny restarts it at "
        f"{terminate_fraction():.0%} of the limit), so it would be killed ({advice}). Give "
        "smaller blocks (--block-rows, or block_size; a Zarr block holds whole chunks, so "
        "chunks this large need the array rewritten with smaller ones), fewer threads per "
        "worker (dask worker --nthreads), or more memory per worker (dask worker "
        "--memory-limit, or the cluster config's memory)."
    )


def fit_blocks_to_workers(
    X: Any,
    workers: list[WorkerMemory] | None,
    reblock: Callable[[int], Any] | None = None,
    n_components: int | None = None,
    covariance_type: str | None = None,
) -> Any:
    """``X``, or ``reblock(rows)`` when no worker can hold a block of ``X`` and the
    source can be read in smaller blocks; raises :class:`WorkerMemoryError` when
    even those do not fit (or ``reblock`` is ``None``).

    ``reblock(rows)`` returns the same rows as a dask array of blocks of at most
    about ``rows`` rows (a Zarr source rounds them to whole chunks).
    """
    if not workers:
        return X
    n_features, itemsize = int(X.shape[1]), int(X.dtype.itemsize)
    sizing = (n_features, itemsize, n_components, covariance_type)
    rows = tuple(int(c) for c in X.chunks[0])
    try:
        check_blocks_fit(workers, rows, *sizing)
        return X
    except WorkerMemoryError:
        fits = rows_that_fit(workers, *sizing)
        if reblock is None or not fits:
            raise
    smaller = reblock(fits)
    check_blocks_fit(workers, tuple(int(c) for c in smaller.chunks[0]), *sizing)
    return smaller


def decide_persist(
    persist: bool | str, nbytes: float, fraction: float, scheduler: Any = None
) -> bool:
    """Whether to keep the blocks in memory across passes.

    ``"auto"``: when the array takes at most ``fraction`` of :func:`cluster_memory`;
    larger arrays are read from storage on every pass, one block at a time.
    """
    if isinstance(persist, bool):
        return persist
    if persist != "auto":
        raise ValueError(f"persist must be 'auto', True or False, got {persist!r}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"persist_fraction must be in (0, 1], got {fraction!r}.")
    return nbytes <= fraction * cluster_memory(scheduler)


class DaskEngine:
    """Row blocks of a dask array (all columns in one block), reduced as a tree.

    Parameters
    ----------
    X : dask.array.Array (n, D), one chunk along the columns
    sample_weight : dask.array.Array (n,) with the same row chunks, or None
    split_every : int
        Fan-in of the reduction tree.
    scheduler : optional
        Passed to ``dask.compute`` (``None``: the active default).
    persist : "auto", True or False
        Keep the blocks in (cluster) memory across passes; ``"auto"`` does so
        when they take at most ``persist_fraction`` of the workers' memory.
    persist_fraction : float
    row_offsets : tuple of int, optional
        Global index of every block's first row, for naming bad rows (default:
        the blocks' positions in ``X``).
    n_components, covariance_type : optional
        Of the model the blocks will be fitted to: they size the memory check.
    reblock : callable, optional
        ``reblock(rows)`` reopens the source in blocks of at most about ``rows``
        rows; given, blocks that no worker could hold are made smaller instead
        of refused.
    check_memory : True, "cached" or False, default=True
        Check the blocks against the workers' memory (:func:`workers_memory`:
        one call to the workers, its result reused for a while); ``"cached"``
        checks them only against a measurement still reused, asking nothing of
        the cluster (engines that read every block once: predictions, scores);
        ``False`` for engines over blocks already checked (a stream's windows).
    refused_tasks : frozenset of str
        Block tasks this engine refuses by name (none by default).

    Raises
    ------
    WorkerMemoryError
        With a distributed client, when a worker has not the memory to process
        the blocks it would run at once (:func:`check_blocks_fit`), before any pass.
    WorkerEnvironmentError
        When a worker cannot load distmix.
    """

    def __init__(
        self,
        X: Any,
        sample_weight: Any | None = None,
        split_every: int = DEFAULT_SPLIT_EVERY,
        scheduler: Any = None,
        persist: bool | str = False,
        persist_fraction: float = 0.5,
        row_offsets: tuple[int, ...] | None = None,
        *,
        n_components: int | None = None,
        covariance_type: str | None = None,
        reblock: Callable[[int], Any] | None = None,
        check_memory: bool | Literal["cached"] = True,
        refused_tasks: frozenset[str] = frozenset(),
        kernel: str | None = None,
    ) -> None:
        self.refused_tasks = frozenset(refused_tasks)
        self.kernel = kernel  # the fit's choice of block kernels, travels with each task
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: -1})
        # before any pass: a block that no worker can hold would kill every worker
        # that tries it, and the fit would end, much later, in KilledWorker
        if check_memory not in (True, False, "cached"):
            raise ValueError(f"check_memory must be True, False or 'cached', got {check_memory!r}.")
        X = fit_blocks_to_workers(
            X,
            workers_memory(scheduler, measure=check_memory is True) if check_memory else None,
            reblock if row_offsets is None else None,  # offsets name the given blocks
            n_components,
            covariance_type,
        )
        self.n_rows, self.n_features = int(X.shape[0]), int(X.shape[1])
        if sample_weight is not None and sample_weight.chunks[0] != X.chunks[0]:
            sample_weight = sample_weight.rechunk({0: X.chunks[0]})
        self.persisted = decide_persist(persist, X.nbytes, persist_fraction, scheduler)
        if self.persisted:
            # read once, keep the blocks in the workers' memory for every pass; the
            # engine holds the only reference, so they are released with it
            X = X.persist(scheduler=scheduler)
            if sample_weight is not None:
                sample_weight = sample_weight.persist(scheduler=scheduler)
        self.X = X
        self.sample_weight = sample_weight
        self.split_every = check_split_every(split_every)
        self.scheduler = scheduler
        self._row_offsets = check_row_offsets(row_offsets, self.block_rows)
        self._x_blocks = list(X.to_delayed(optimize_graph=False).ravel())
        self._w_blocks = (
            list(sample_weight.to_delayed(optimize_graph=False).ravel())
            if sample_weight is not None
            else None
        )

    @property
    def block_rows(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.X.chunks[0])

    @property
    def row_offsets(self) -> tuple[int, ...]:
        return self._row_offsets

    def parallel_blocks(self) -> int:
        """How many blocks run at once (:func:`parallel_blocks`): a stream's default window."""
        return parallel_blocks()

    def window(self, ranges: Sequence[tuple[int, int]], *, persist: bool = False) -> DaskEngine:
        """An engine over the row ``ranges`` of this one (one block per range, in the
        order given), its rows keeping their global index: a stream's update. Its
        blocks are not checked against the workers' memory again; ``persist`` keeps
        them in (cluster) memory."""

        offsets = window_offsets(ranges, self.block_rows, self._row_offsets)
        lengths = tuple(b - a for a, b in ranges)

        def gather(array: Any) -> Any:
            parts = [array[a:b] for a, b in ranges]
            whole = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)
            # one block per range (a no-op where the ranges are blocks, as a stream's are)
            return whole.rechunk({0: lengths})

        return DaskEngine(
            gather(self.X),
            None if self.sample_weight is None else gather(self.sample_weight),
            split_every=self.split_every,
            scheduler=self.scheduler,
            persist=persist,
            row_offsets=offsets,
            check_memory=False,  # the source's engine checked these blocks once
            refused_tasks=self.refused_tasks,
            kernel=self.kernel,
        )

    def window_ahead(self, ranges: Sequence[tuple[int, int]]) -> Future[WindowedEngine]:
        """:meth:`window`, its rows read meanwhile (a stream's next update).

        On a distributed cluster the window's blocks are persisted: the workers read
        them while the current update computes, and the window is a Dask engine over
        them (rows never come to the client). On the local schedulers (threads,
        processes, synchronous) one background thread computes the blocks, and the
        window is a :class:`~distmix.engines.local.LocalEngine` over them in this
        process, where the blocks would have been computed anyway: the same blocks,
        kernel and reduction tree, so the same statistics.
        """
        if _on_cluster(self.scheduler):
            return ready(self.window(ranges, persist=True))
        offsets = window_offsets(ranges, self.block_rows, self._row_offsets)
        lengths = tuple(b - a for a, b in ranges)

        def read() -> WindowedEngine:
            w = self.sample_weight
            return LocalEngine(
                concat_rows(self._read_ranges(self.X, ranges)),
                None if w is None else concat_rows(self._read_ranges(w, ranges)),
                lengths,
                self.split_every,
                n_threads=_threads_beside_reading(),
                row_offsets=offsets,
                refused_tasks=self.refused_tasks,
                kernel=self.kernel,
            )

        return _read_ahead_pool().submit(read)

    def _read_ranges(self, array: Any, ranges: Sequence[tuple[int, int]]) -> list[Any]:
        """The rows of each of ``ranges`` of ``array`` (the rows or their weights),
        computed in this thread, block after block (the reads are bound by the store's
        client, zarr's one I/O loop, not by the threads asking). Whole blocks (a
        stream's ranges) from their own tasks only, the graph culled to their keys: a
        ``dask.compute`` would first optimise the array's whole graph (measured: 7.1
        against 4.9 ms for two 2 MiB Zarr chunks, 4.4 ms for zarr alone)."""
        spans = zip(block_offsets(self.block_rows), self.block_rows, strict=True)
        where = {(a, a + n): i for i, (a, n) in enumerate(spans)}
        if all(tuple(r) in where for r in ranges):
            keys = list(dask.core.flatten(array.__dask_keys__()))  # one per row block
            wanted = [keys[where[(a, b)]] for a, b in ranges]
            graph = array.__dask_graph__()
            if hasattr(graph, "cull"):
                needed = dict(graph.cull(set(wanted)))
            else:
                needed = dask.optimization.cull(dict(graph), wanted)[0]
            return list(dask.local.get_sync(needed, wanted))
        (parts,) = dask.compute([array[a:b] for a, b in ranges], scheduler="sync")
        return list(parts)

    def graph(self, task: TaskName, *args: Any) -> Any:
        """The Delayed whose compute is one :meth:`reduce` (for inspection and tests).

        Keys: ``("distmix-<task>-<n>", "block", i)`` for block ``i``, then the
        tree's ``("distmix-<task>-<n>-sum", level, j)``.
        """
        return self._graph(task, args)[0]

    def _graph(self, task: TaskName, args: tuple) -> tuple[Any, str, int]:
        """``(graph, name of its keys, number of block tasks)``."""
        spec = get_task(task, "reduce", self.refused_tasks, by="the Dask engine")
        check_arguments(spec, args)
        which = spec.blocks(args, self._row_offsets, self.block_rows)
        if not which:
            raise ValueError(f"block task {task!r} needs none of the engine's blocks.")
        name = f"distmix-{task}-{next(_call_ids)}"
        args_key = dask.delayed(args, pure=True)  # one key every block task depends on
        w_blocks = self._w_blocks or [None] * len(self._x_blocks)
        parts = [
            dask.delayed(run_block, pure=True)(
                task,
                self._x_blocks[i],
                w_blocks[i],
                self._row_offsets[i],
                args_key,
                self.kernel,
                dask_key_name=(name, "block", i),
            )
            for i in which
        ]
        return dask_tree_sum(parts, self.split_every, name + "-sum"), name, len(parts)

    def reduce(self, task: TaskName, *args: Any) -> Any:
        graph, name, n_blocks = self._graph(task, args)
        if progress.reporting_on():
            return _compute_reporting(graph, self.scheduler, name, n_blocks)
        with _blas_limit_for(self.scheduler, graph):
            (result,) = dask.compute(graph, scheduler=self.scheduler)
        return result

    def map_blocks(self, task: TaskName, *args: Any) -> Any:
        """The map task on every block: a lazy dask array chunked like the rows.

        Its blocks are in the namespace of the input's meta: a dask array of CuPy
        chunks gives CuPy outputs; a NumPy one gives NumPy outputs, also where the
        blocks were put on a device as they were read (``distmix.block-namespace``):
        each output is then copied to the host by its task.
        """
        spec = get_task(task, "map", self.refused_tasks, by="the Dask engine")
        check_arguments(spec, args)
        columns = spec.columns(*args) if spec.columns is not None else None
        layout: dict[str, Any] = (
            {"drop_axis": 1} if columns is None else {"chunks": (self.X.chunks[0], (columns,))}
        )
        # the outputs' meta in the rows' namespace (dask would guess NumPy's for CuPy rows)
        meta = meta_from_array(self.X._meta, ndim=1 if columns is None else 2, dtype=spec.dtype)
        return self.X.map_blocks(
            _map_block,
            task,
            dask.delayed(args, pure=True),
            dask.delayed(self._row_offsets, pure=True),
            is_host_array(self.X._meta),
            self.kernel,
            dtype=spec.dtype,
            meta=meta,
            **layout,
        )


def _map_block(
    block: Any,
    task: str,
    args: tuple,
    row_offsets: tuple[int, ...],
    on_host: bool,
    kernel: str | None,
    block_info: Any = None,
) -> Any:
    """One block of :meth:`DaskEngine.map_blocks`: its global first row from its place;
    its output copied to the host when ``on_host`` and the block was not there."""
    out = run_map_block(task, block, row_offsets[block_info[0]["chunk-location"][0]], args, kernel)
    return to_host(out) if on_host and not is_host_array(out) else out
