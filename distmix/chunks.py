"""Sources → row blocks, and the validation that rides along.

A source is a NumPy (or other array-API) array, a dask array or a Zarr array.
Whatever it is, distmix sees it as row blocks holding all columns. Shape and
dtype are checked here before any pass; finiteness is checked in the first pass
itself (the kernels count non-finite rows and remember the first one), and
:func:`raise_if_nonfinite` turns those counts into an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: aim for this many bytes in a block's (rows, D) float64 copy: about one L2 cache
TARGET_BLOCK_BYTES = 2**20


class NonFiniteInputError(ValueError):
    """The input holds NaN or infinity."""


def is_dask_array(x: Any) -> bool:
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def is_zarr_array(x: Any) -> bool:
    return type(x).__module__.startswith("zarr") and hasattr(x, "chunks") and hasattr(x, "store")


def default_block_rows(n_components: int, n_features: int) -> int:
    """Rows per in-memory block: a (rows, D) float64 block of about 1 MiB.

    Measured on the benchmark shapes (``benchmarks/bench_em_iteration.py``):
    smaller blocks pay Python overhead per block, larger ones fall out of cache.
    The (K, rows, D) stack of the generic path is then K MiB.
    """
    rows = TARGET_BLOCK_BYTES // (8 * max(1, n_features))
    return int(min(max(rows, 256), 2**20))


def check_dtype(dtype: Any, name: str = "X") -> None:
    kind = np.dtype(dtype).kind
    if kind == "c":
        raise ValueError(
            f"Complex data not supported: {name} has dtype {np.dtype(dtype)}; a Gaussian "
            "mixture over complex values needs its real and imaginary parts as features."
        )
    if kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {np.dtype(dtype)}, which is not numeric; distmix fits "
            "float32 or float64 data (integers and booleans are converted to float64)."
        )


def check_shape(shape: tuple[int, ...], n_components: int | None, name: str = "X") -> None:
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be 2-D (rows × features), got {len(shape)}-D with shape {shape}. "
            "Reshape a single feature with X.reshape(-1, 1) or a single sample with "
            "X.reshape(1, -1)."
        )
    n, d = shape
    if isinstance(n, float) and math.isnan(n):
        raise ValueError(
            f"{name} has unknown chunk sizes along its rows; call "
            f"{name}.compute_chunk_sizes() first."
        )
    if n == 0:
        raise ValueError(f"{name} has 0 rows (shape={shape}); at least 1 row is required.")
    if d == 0:
        raise ValueError(f"0 feature(s) (shape={shape}) while a minimum of 1 is required.")
    if n_components is not None and n < n_components:
        raise ValueError(
            f"{name} has n_samples={n} rows but n_components={n_components}: a mixture "
            "needs at least as many rows as components."
        )


def as_dask_rows(X: Any, block_rows: int | tuple[int, ...] | None = None) -> Any:
    """A dask array (from a dask or Zarr array) with all columns in one chunk.

    Zarr arrays keep their row chunking (each task reads whole Zarr chunks) unless
    ``block_rows`` asks for another.
    """
    import dask.array as da

    if is_zarr_array(X):
        X = da.from_zarr(X)
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


@dataclass(frozen=True)
class NonFinite:
    """Count of non-finite rows and the first one's global index (``inf`` when none)."""

    count: float
    first: float

    def __add__(self, other: NonFinite) -> NonFinite:
        return NonFinite(self.count + other.count, min(self.first, other.first))

    def raise_if_any(self, name: str = "X") -> None:
        raise_if_nonfinite(self.count, self.first, name)


def raise_if_nonfinite(n_nonfinite: float, first_row: float, name: str = "X") -> None:
    """Raise :class:`NonFiniteInputError` if a pass counted non-finite rows."""
    if n_nonfinite > 0:
        raise NonFiniteInputError(
            f"Input {name} contains NaN or infinity in {int(n_nonfinite)} row(s); the first "
            f"is row {int(first_row)}. Remove or impute them (e.g. with "
            "sklearn.impute.SimpleImputer)."
        )
