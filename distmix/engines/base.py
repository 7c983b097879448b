"""What every engine offers: named block tasks, tree-summed or mapped, over its blocks.

An engine knows where the row blocks are and how their partial results are
combined; it knows nothing of Gaussian mixtures, the EM loop or the estimator.
It is asked for a task of the closed registry in :mod:`distmix.tasks` by name,
with small arguments (Params, centres, seeds), never for an arbitrary
function, and may refuse a task by name (:attr:`Engine.refused_tasks`).

The conformance suite every engine passes is :mod:`distmix.testing`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np

from distmix.results import Rows
from distmix.tasks import TaskName, get_task


class Engine(Protocol):
    """The interface the EM loop, the initialisers and the online driver use."""

    n_rows: int
    n_features: int
    split_every: int
    #: names of block tasks this engine refuses (a federation: those that move rows)
    refused_tasks: frozenset[str]

    @property
    def block_rows(self) -> tuple[int, ...]:
        """Number of rows of each block, in order."""
        ...

    @property
    def row_offsets(self) -> tuple[int, ...]:
        """Global index of each block's first row (its position, unless the blocks
        were gathered from a larger source): bad rows are named by it."""
        ...

    def reduce(self, task: TaskName, *args: Any) -> Any:
        """The tree sum (fan-in ``split_every``, block order) of the reduce task
        ``task`` run on every block it needs, on the host.

        One compute (one pass over the rows) per call; raises
        :class:`~distmix.tasks.TaskRefusedError` for a refused task.
        """
        ...

    def map_blocks(self, task: TaskName, *args: Any) -> Any:
        """The map task ``task`` on every block, its outputs in row order: a NumPy
        array from an in-process engine, a lazy dask array from a Dask engine."""
        ...


class WindowedEngine(Engine, Protocol):
    """An engine a stream can read window by window (every engine ``make_engine`` builds)."""

    def parallel_blocks(self) -> int:
        """How many blocks run at once: a stream's default window."""
        ...

    def window(self, ranges: Sequence[tuple[int, int]]) -> WindowedEngine:
        """An engine over the row ``ranges`` (positions in this engine) of this one, one
        block per range in the order given, its rows keeping their global index."""
        ...

    def window_ahead(self, ranges: Sequence[tuple[int, int]]) -> Future[WindowedEngine]:
        """:meth:`window`, its rows read meanwhile: returns at once, and the future's
        result is the window's engine, over rows already read (what the read raised,
        it raises). A stream asks for its next window before it updates with this one,
        so that reading the next rows overlaps the arithmetic on these."""
        ...


def ready(engine: WindowedEngine) -> Future[WindowedEngine]:
    """A future already holding ``engine`` (a window with nothing left to read)."""
    future: Future[WindowedEngine] = Future()
    future.set_result(engine)
    return future


def rows_at(engine: Engine, positions: Any) -> np.ndarray:
    """The engine's rows at ``positions`` (0 ≤ p < ``n_rows``, counted over its blocks
    in order; any order, repeats allowed) as float64 ``(m, D)``, through the
    ``take_rows`` task, which reads only the blocks that hold them."""
    # refused before anything is computed (a federation's row count is itself a pass)
    get_task("take_rows", "reduce", engine.refused_tasks, by=type(engine).__name__)
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.size == 0:
        return np.empty((0, engine.n_features))
    if pos.min() < 0 or pos.max() >= engine.n_rows:
        raise IndexError(
            f"row positions must be in [0, {engine.n_rows}), got {pos.min()}..{pos.max()}."
        )
    # a block's rows are numbered globally from its row offset (a stream's window
    # gathers blocks from anywhere in its source)
    starts = np.asarray(block_offsets(engine.block_rows), dtype=np.int64)
    offsets = np.asarray(engine.row_offsets, dtype=np.int64)
    block = np.searchsorted(starts, pos, side="right") - 1
    wanted = offsets[block] + (pos - starts[block])
    unique = np.unique(wanted)
    taken: Rows = engine.reduce("take_rows", unique)
    order = np.argsort(taken.index, kind="stable")
    found = taken.index[order]
    if not np.array_equal(found, unique):
        raise RuntimeError(
            f"the take_rows task returned {found.size} rows for {unique.size} asked for."
        )
    return taken.rows[order][np.searchsorted(found, wanted)]


def block_offsets(block_rows: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(block_rows)[:-1]]))


def window_offsets(
    ranges: Sequence[tuple[int, int]], block_rows: tuple[int, ...], row_offsets: tuple[int, ...]
) -> tuple[int, ...]:
    """The global first row of each of a window's ``ranges`` (positions in an engine of
    ``block_rows`` whose blocks start at global rows ``row_offsets``).

    A range becomes one block of the window, with one global first row, so its rows
    must be consecutive global rows: a range across blocks that are not (a window of
    a window, say) is refused rather than numbered wrongly.
    """
    starts = block_offsets(block_rows)
    n_rows = sum(block_rows)
    offsets = []
    for a, b in ranges:
        if not 0 <= a <= b <= n_rows:
            raise ValueError(f"window range ({a}, {b}) is not within the {n_rows} rows.")
        first = max(0, bisect.bisect_right(starts, a) - 1)
        last = max(first, bisect.bisect_left(starts, b) - 1)
        for i in range(first + 1, last + 1):
            if row_offsets[i] != row_offsets[i - 1] + block_rows[i - 1]:
                raise ValueError(
                    f"window range ({a}, {b}) spans blocks whose rows are not consecutive "
                    f"global rows (block {i} starts at global row {row_offsets[i]}, not "
                    f"{row_offsets[i - 1] + block_rows[i - 1]}): give ranges within them."
                )
        offsets.append(row_offsets[first] + a - starts[first])
    return tuple(offsets)


def check_row_offsets(
    row_offsets: tuple[int, ...] | None, block_rows: tuple[int, ...]
) -> tuple[int, ...]:
    """The blocks' global first rows: ``row_offsets`` as given, or their positions."""
    if row_offsets is None:
        return block_offsets(block_rows)
    offsets = tuple(int(o) for o in row_offsets)
    if len(offsets) != len(block_rows):
        raise ValueError(
            f"row_offsets has {len(offsets)} entries for {len(block_rows)} blocks; "
            "give one global first row per block."
        )
    return offsets
