"""What every engine offers: run a block function on every block and tree-sum.

An engine knows where the row blocks are and how their partial results are
combined; it knows nothing of Gaussian mixtures or of the estimator. A block
function has the signature ``fn(block, sample_weight_block, row_offset, *args)``
and returns something with an associative ``+`` (SuffStats, NumPy arrays, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

BlockFn = Callable[..., Any]


class Engine(Protocol):
    """The interface the EM loop and the initialisers use."""

    n_rows: int
    n_features: int
    split_every: int

    @property
    def block_rows(self) -> tuple[int, ...]:
        """Number of rows of each block, in order."""
        ...

    def map_reduce(self, fn: BlockFn, *args: Any) -> Any:
        """``tree_sum(fn(block_i, w_i, offset_i, *args) for each block)``, on the host.

        One compute (one pass over the rows) per call.
        """
        ...

    def take_rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows at global ``indices`` as a float64 host array ``(m, D)``."""
        ...


def block_offsets(block_rows: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(o) for o in np.concatenate([[0], np.cumsum(block_rows)[:-1]]))


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
