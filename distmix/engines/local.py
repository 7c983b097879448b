"""The local engine: blocks of an in-memory array, in process.

Blocks run on a small thread pool (NumPy's elementwise loops and matmul release
the GIL), one block per thread with BLAS itself held to one thread meanwhile,
so that the elementwise passes use every core as well as the matrix products.
Results are taken in block order, so the sum is the same whatever the number of
threads.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import array_api_compat
import numpy as np

from distmix import progress
from distmix._blas import one_blas_thread
from distmix.engines.base import (
    WindowedEngine,
    block_offsets,
    check_row_offsets,
    ready,
    window_offsets,
)
from distmix.kernels import chosen, compiled_kernel
from distmix.reduce import DEFAULT_SPLIT_EVERY, check_split_every, tree_sum
from distmix.sources.blocks import check_block_size
from distmix.tasks import TaskName, check_arguments, get_task, run_block, run_map_block


def split_rows(n_rows: int, block_size: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """Block lengths for ``n_rows`` rows: all in one, every ``block_size``, or as given."""
    checked = check_block_size(block_size, n_rows)
    if checked is None:
        return (n_rows,)
    if isinstance(checked, tuple):
        return checked
    full, rest = divmod(n_rows, checked)
    return (checked,) * full + ((rest,) if rest else ())


class LocalEngine:
    """Row blocks of an in-memory array (any array-API namespace), reduced in process.

    Parameters
    ----------
    X : array (n, D)
    sample_weight : array (n,) or None
    block_size : int, tuple of ints or None
        Rows per block, or the explicit length of every block.
    split_every : int
        Fan-in of the reduction tree.
    n_threads : int or None
        Blocks run at once (``None``: one per core, or 1 for CuPy arrays, whose
        kernels run asynchronously on the caller's device and stream, which
        pool threads would not share; 1: serially, BLAS free to use its own
        threads).
    row_offsets : tuple of int, optional
        Global index of every block's first row, for naming bad rows (default:
        the blocks' positions in ``X``). A stream gives the source's rows here
        when ``X`` holds a window of blocks gathered from anywhere in it.
    refused_tasks : frozenset of str
        Block tasks this engine refuses by name (none by default).
    """

    def __init__(
        self,
        X: Any,
        sample_weight: Any | None = None,
        block_size: int | tuple[int, ...] | None = None,
        split_every: int = DEFAULT_SPLIT_EVERY,
        n_threads: int | None = None,
        row_offsets: tuple[int, ...] | None = None,
        refused_tasks: frozenset[str] = frozenset(),
        kernel: str | None = None,
    ) -> None:
        self.X = X
        self.refused_tasks = frozenset(refused_tasks)
        self.kernel = kernel  # the fit's choice of block kernels, passed to each block
        self.sample_weight = sample_weight
        self.n_rows, self.n_features = int(X.shape[0]), int(X.shape[1])
        self.split_every = check_split_every(split_every)
        self._block_rows = split_rows(self.n_rows, block_size)
        self._row_offsets = check_row_offsets(row_offsets, self._block_rows)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if n_threads is None and array_api_compat.is_cupy_array(X):
            n_threads = 1
        self.n_threads = max(1, min(n_threads or cores or 1, len(self._block_rows)))

    @property
    def block_rows(self) -> tuple[int, ...]:
        return self._block_rows

    @property
    def row_offsets(self) -> tuple[int, ...]:
        return self._row_offsets

    def _blocks(self, which: list[int] | None = None) -> Any:
        starts = block_offsets(self._block_rows)
        for i in range(len(starts)) if which is None else which:
            start, stop = starts[i], starts[i] + self._block_rows[i]
            w = None if self.sample_weight is None else self.sample_weight[start:stop]
            yield self.X[start:stop, ...], w, self._row_offsets[i]

    def parallel_blocks(self) -> int:
        """How many blocks could run at once: this machine's cores (a stream's default
        window, which does not depend on ``n_threads``)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, cores or 1)

    def window(self, ranges: Sequence[tuple[int, int]]) -> LocalEngine:
        """An engine over the row ``ranges`` of this one (one block per range, in the
        order given), its rows keeping their global index: a stream's update."""
        offsets = window_offsets(ranges, self._block_rows, self._row_offsets)
        lengths = tuple(b - a for a, b in ranges)
        if len(ranges) == 1:
            rows = slice(*ranges[0])
            X = self.X[rows, ...]
            w = None if self.sample_weight is None else self.sample_weight[rows]
        else:
            index = np.concatenate([np.arange(a, b) for a, b in ranges])
            X, w = _take_rows(self.X, index), _take_rows(self.sample_weight, index)
        return LocalEngine(
            X,
            w,
            lengths,
            self.split_every,
            row_offsets=offsets,
            refused_tasks=self.refused_tasks,
            kernel=self.kernel,
        )

    def window_ahead(self, ranges: Sequence[tuple[int, int]]) -> Future[WindowedEngine]:
        """:meth:`window`, already in memory: nothing to read ahead."""
        return ready(self.window(ranges))

    def reduce(self, task: TaskName, *args: Any) -> Any:
        spec = get_task(task, "reduce", self.refused_tasks, by="the local engine")
        check_arguments(spec, args)
        which = spec.blocks(args, self._row_offsets, self._block_rows)

        def run(item: tuple[Any, Any, int]) -> Any:
            block, w, start = item
            return run_block(task, block, w, start, args, self.kernel)

        reporter = progress.current()
        reporter.begin_pass(len(which))

        def counted(parts: Iterator[Any]) -> Iterator[Any]:
            for done, part in enumerate(parts, start=1):
                reporter.blocks_done(done)
                yield part

        return self._each_block(
            task, run, lambda parts: tree_sum(counted(parts), self.split_every), which
        )

    def map_blocks(self, task: TaskName, *args: Any) -> Any:
        """The map task on every block, the outputs concatenated in row order, in the
        namespace of the blocks (NumPy for NumPy rows, CuPy on the device for CuPy)."""
        spec = get_task(task, "map", self.refused_tasks, by="the local engine")
        check_arguments(spec, args)

        def run(item: tuple[Any, Any, int]) -> Any:
            block, _, start = item
            return run_map_block(task, block, start, args, self.kernel)

        return self._each_block(task, run, concat_rows)

    def _each_block(
        self,
        task: TaskName,
        run: Callable[[Any], Any],
        consume: Callable[[Iterator[Any]], Any],
        which: list[int] | None = None,
    ) -> Any:
        """``consume`` the results of ``run`` (the block task ``task``) on every block
        (or those ``which`` lists), in block order.

        Blocks run side by side on the shared pool (host blocks whose kernel may call
        BLAS: with BLAS held to one thread meanwhile); the first failing block, in
        order, raises.
        """
        if self.n_threads == 1:
            return consume(map(run, self._blocks(which)))
        pool = _shared_pool(self.n_threads)
        with one_blas_thread() if self._may_call_blas(task) else nullcontext():
            return consume(_ordered_map(pool, run, self._blocks(which), 2 * self.n_threads))

    def _may_call_blas(self, task: TaskName) -> bool:
        """Whether ``task``'s kernel on these blocks may call BLAS: host blocks, but
        not those the compiled kernels serve (they call none; holding BLAS to one
        thread costs two calls into it, each waiting for the GIL, per pass)."""
        if not _on_host(self.X):
            return False
        if not isinstance(self.X, np.ndarray):
            return True  # blocks read from another host array: not known before
        with chosen(self.kernel):
            return compiled_kernel(task, self.X) is None


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _shared_pool(n_threads: int) -> ThreadPoolExecutor:
    """One thread pool per size for the whole process, made on first use.

    Engines come and go (a stream makes one per update); their blocks run on
    the same long-lived threads.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(n_threads)
        if pool is None:
            pool = _POOLS[n_threads] = ThreadPoolExecutor(
                n_threads, thread_name_prefix="distmix-block"
            )
        return pool


def _ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterator[Any], window: int
) -> Iterator[Any]:
    """``map(fn, items)`` on ``pool`` with at most ``window`` blocks in flight, in order.

    When a block fails (or the consumer stops early), the blocks not started yet
    are cancelled and those running are waited for: none runs on after the
    caller has moved on (and released its BLAS limit).
    """
    pending: deque[Any] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)


def _on_host(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _take_rows(array: Any, index: np.ndarray) -> Any:
    """``array[index]`` (rows), in the array's namespace and on its device
    (``None`` stays ``None``)."""
    if array is None or _on_host(array):
        return None if array is None else array[index]
    xp = array_api_compat.array_namespace(array)
    where = xp.asarray(index, device=array_api_compat.device(array))
    return xp.take(array, where, axis=0)


def concat_rows(parts: Iterable[Any]) -> Any:
    """The outputs of the blocks, in order, as one array of their namespace: NumPy
    blocks give NumPy, CuPy blocks CuPy (still on their device)."""
    arrays = list(parts)
    if all(_on_host(a) for a in arrays):
        return np.concatenate(arrays, axis=0)
    return array_api_compat.array_namespace(*arrays).concat(arrays, axis=0)
