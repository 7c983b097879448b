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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import array_api_compat
import numpy as np

from distmix._blas import one_blas_thread
from distmix.chunks import check_block_size
from distmix.engines.base import BlockFn, block_offsets, check_row_offsets
from distmix.reduce import DEFAULT_SPLIT_EVERY, check_split_every, tree_sum
from distmix.suffstats import _to_numpy


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
    """

    def __init__(
        self,
        X: Any,
        sample_weight: Any | None = None,
        block_size: int | tuple[int, ...] | None = None,
        split_every: int = DEFAULT_SPLIT_EVERY,
        n_threads: int | None = None,
        row_offsets: tuple[int, ...] | None = None,
    ) -> None:
        self.X = X
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

    def _blocks(self) -> Any:
        for start, length, offset in zip(
            block_offsets(self._block_rows), self._block_rows, self._row_offsets, strict=True
        ):
            stop = start + length
            w = None if self.sample_weight is None else self.sample_weight[start:stop]
            yield self.X[start:stop, ...], w, offset

    def map_reduce(self, fn: BlockFn, *args: Any) -> Any:
        def run(item: tuple[Any, Any, int]) -> Any:
            block, w, start = item
            return _host(fn(block, w, start, *args))

        return self._each_block(run, lambda parts: tree_sum(parts, self.split_every))

    def map_blocks(self, fn: Any, *args: Any) -> list[Any]:
        """``[fn(block, *args, row_offset=start) for each block]`` (for prediction)."""

        def run(item: tuple[Any, Any, int]) -> Any:
            block, _, start = item
            return fn(block, *args, row_offset=start)

        return self._each_block(run, list)

    def _each_block(
        self, run: Callable[[Any], Any], consume: Callable[[Iterator[Any]], Any]
    ) -> Any:
        """``consume`` the results of ``run`` on every block, in block order.

        Blocks run side by side on the shared pool (NumPy: with BLAS held to one
        thread meanwhile); the first failing block, in order, raises.
        """
        if self.n_threads == 1:
            return consume(map(run, self._blocks()))
        pool = _shared_pool(self.n_threads)
        with one_blas_thread() if _on_host(self.X) else nullcontext():
            return consume(_ordered_map(pool, run, self._blocks(), 2 * self.n_threads))

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return (
            np.stack([_to_numpy(self.X[int(i), ...]) for i in idx])
            if idx.size
            else np.empty((0, self.n_features))
        )


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


def _host(part: Any) -> Any:
    to_host = getattr(part, "to_host", None)
    return to_host() if to_host is not None else part
