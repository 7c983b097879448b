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
import itertools
from collections.abc import Iterator
from contextlib import nullcontext
from contextvars import ContextVar
from typing import Any

import numpy as np

from distmix._blas import one_blas_thread
from distmix.engines.base import BlockFn, check_row_offsets
from distmix.reduce import DEFAULT_SPLIT_EVERY, check_split_every, dask_tree_sum
from distmix.suffstats import _to_numpy

_call_ids = itertools.count()


def _blas_limit_for(scheduler: Any, graph: Any) -> Any:
    """One BLAS thread per task when the tasks share this process's cores.

    The threaded scheduler already runs one block per core; letting BLAS start
    its own threads in every task would oversubscribe the cores (measured: 2×
    slower on 2 cores). Distributed workers set this themselves.
    """
    import dask.base
    import dask.threaded

    if dask.base.get_scheduler(scheduler=scheduler, collections=[graph]) is dask.threaded.get:
        return one_blas_thread()
    return nullcontext()


def _call_block(fn: BlockFn, block: Any, w: Any, offset: int, args: tuple) -> Any:
    part = fn(block, w, offset, *args)
    to_host = getattr(part, "to_host", None)
    return to_host() if to_host is not None else part


_SHOW_PROGRESS: ContextVar[bool] = ContextVar("distmix_show_progress", default=False)


@contextlib.contextmanager
def show_progress() -> Iterator[None]:
    """Within this block, every pass of a Dask engine draws a progress bar of its tasks
    (block reads and additions) on the terminal: Dask's ``ProgressBar`` on the local
    schedulers, ``distributed.progress`` with a distributed client."""
    token = _SHOW_PROGRESS.set(True)
    try:
        yield
    finally:
        _SHOW_PROGRESS.reset(token)


def _compute_with_progress(graph: Any, scheduler: Any) -> Any:
    import dask
    import dask.base

    client = None
    if scheduler is None:
        with contextlib.suppress(ImportError, ValueError):
            from distributed import default_client

            client = default_client()
    if client is not None and dask.base.get_scheduler(collections=[graph]) == client.get:
        from distributed import progress

        future = client.compute(graph)  # still one computation for the pass
        progress(future, notebook=False)
        print(flush=True)
        return future.result()
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=1.0), _blas_limit_for(scheduler, graph):
        (result,) = dask.compute(graph, scheduler=scheduler)
    return result


def cluster_memory(scheduler: Any = None) -> float:
    """Bytes of memory the active scheduler's workers may use.

    A distributed client: the sum of its workers' memory limits (a worker
    without a limit counts as this machine's total memory). Otherwise: this
    machine's available memory.
    """
    import psutil

    if scheduler is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
        if client is not None:
            workers = client.scheduler_info()["workers"].values()
            total = psutil.virtual_memory().total
            return float(sum(w.get("memory_limit") or total for w in workers))
    return float(psutil.virtual_memory().available)


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
    ) -> None:
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: -1})
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

    def graph(self, fn: BlockFn, *args: Any) -> Any:
        """The Delayed whose compute is one ``map_reduce`` (for inspection and tests)."""
        import dask

        name = f"distmix-{getattr(fn, '__name__', 'block')}-{next(_call_ids)}"
        args_key = dask.delayed(args, pure=True)  # one key every block task depends on
        w_blocks = self._w_blocks or [None] * len(self._x_blocks)
        parts = [
            dask.delayed(_call_block, pure=True)(
                fn, block, w, offset, args_key, dask_key_name=(name, "block", i)
            )
            for i, (block, w, offset) in enumerate(
                zip(self._x_blocks, w_blocks, self._row_offsets, strict=True)
            )
        ]
        return dask_tree_sum(parts, self.split_every, name + "-sum")

    def map_reduce(self, fn: BlockFn, *args: Any) -> Any:
        import dask

        graph = self.graph(fn, *args)
        if _SHOW_PROGRESS.get():
            return _compute_with_progress(graph, self.scheduler)
        with _blas_limit_for(self.scheduler, graph):
            (result,) = dask.compute(graph, scheduler=self.scheduler)
        return result

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows at global ``indices``, read from the same block tasks as every pass.

        Going through the blocks (not ``X[indices]``) keeps one definition per
        key: a distributed scheduler warns when a key comes back with a different
        task, as sliced-and-optimised array graphs would.
        """
        import dask

        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.empty((0, self.n_features))
        bounds = np.cumsum((0,) + self.block_rows)
        which = np.searchsorted(bounds, idx, side="right") - 1
        needed = np.unique(which)
        parts = [
            dask.delayed(_rows_of_block, pure=True)(self._x_blocks[b], idx[which == b] - bounds[b])
            for b in needed
        ]
        with _blas_limit_for(self.scheduler, parts[0]):
            blocks = dask.compute(*parts, scheduler=self.scheduler)
        out = np.empty((idx.size, self.n_features))
        for b, rows in zip(needed, blocks, strict=True):
            out[which == b] = rows
        return out


def _rows_of_block(block: Any, local_rows: np.ndarray) -> np.ndarray:
    return _to_numpy(block[local_rows, ...])
