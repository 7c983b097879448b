"""Row blocks: how many rows a block holds, and sources recut to blocks of all columns.

A block always holds all columns, so that a kernel sees whole rows. Its number
of rows is the caller's (``block_size``, checked by :func:`check_block_size`),
the source's own (a dask array's row chunks, whole Zarr chunks), or
:func:`default_block_rows`, sized for the cache.

The EM loop and the engines import this module, so it imports no Zarr: Zarr
sources are opened into dask arrays by :func:`distmix.sources.dataset.open_dataset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distmix.sources.checks import check_dtype, check_shape

#: aim for this many bytes in a block's (rows, D) float64 copy: about one L2 cache
TARGET_BLOCK_BYTES = 2**20


def default_block_rows(n_components: int, n_features: int) -> int:
    """Rows per in-memory block: a (rows, D) float64 block of about 1 MiB.

    Measured on the benchmark shapes (``benchmarks/bench_em_iteration.py``):
    smaller blocks pay Python overhead per block, larger ones fall out of cache.
    The (K, rows, D) stack of the generic path is then K MiB.
    """
    rows = TARGET_BLOCK_BYTES // (8 * max(1, n_features))
    return int(min(max(rows, 256), 2**20))


def as_dask_rows(X: Any, block_rows: int | tuple[int, ...] | None = None) -> Any:
    """A dask array with all columns in one chunk, its rows in ``block_rows`` (``None``:
    as they are). Zarr sources are opened by :func:`~distmix.sources.dataset.open_dataset`,
    whose blocks hold whole Zarr chunks."""
    check_dtype(X.dtype)
    check_shape(X.shape, None)
    rows: Any = X.chunks[0] if block_rows is None else block_rows
    if X.chunks[0] == rows or (isinstance(rows, int) and all(c == rows for c in X.chunks[0][:-1])):
        return X.rechunk({1: -1}) if len(X.chunks[1]) != 1 else X
    return X.rechunk({0: rows, 1: -1})


def check_block_size(block_size: Any, n_rows: int) -> int | tuple[int, ...] | None:
    """``None``, a positive number of rows, or positive block lengths summing to ``n_rows``."""
    if block_size is None:
        return None
    if isinstance(block_size, (tuple, list)):
        sizes = tuple(block_size)
        if (
            not sizes
            or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in sizes)
            or any(b <= 0 for b in sizes)
            or sum(sizes) != n_rows
        ):
            raise ValueError(
                f"block_size={block_size!r}: a tuple of block lengths must hold positive "
                f"integers summing to the number of rows, {n_rows}."
            )
        return tuple(int(b) for b in sizes)
    is_int = isinstance(block_size, (int, np.integer)) and not isinstance(block_size, bool)
    if not is_int or block_size < 1:
        raise ValueError(
            f"block_size must be None, a positive integer (rows per block) or a tuple of "
            f"block lengths, got {block_size!r}."
        )
    return int(block_size)
