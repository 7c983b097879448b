"""What a source is, and the checks of its dtype and shape made before any pass.

Error messages name the data (``name``: ``"X"``, or ``"X at data.zarr"``) and
say what to do, such as how to reshape an array that is not 2-D. No Zarr, no
Dask is imported: sources are told apart by their type's module.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def is_dask_array(x: Any) -> bool:
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def is_zarr_array(x: Any) -> bool:
    return type(x).__module__.startswith("zarr") and hasattr(x, "chunks") and hasattr(x, "store")


def is_zarr_source(x: Any) -> bool:
    """A ``zarr.Array``, or a path / URL (or ``.npy`` path) that
    :func:`~distmix.sources.dataset.open_dataset` opens."""
    return is_zarr_array(x) or isinstance(x, (str, os.PathLike))


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


def reshape_hint(shape: tuple[int, ...], stored: bool = False) -> str:
    """What to do with an array of ``shape`` that is not 2-D, for error messages.

    ``stored``: the array is in a Zarr store, where a reshape means a new array
    (or a reshaped dask view of it).
    """
    if len(shape) <= 2:
        if stored:
            return "Store a single feature with shape (n_rows, 1)."
        return (
            "Reshape a single feature with X.reshape(-1, 1) or a single sample with "
            "X.reshape(1, -1)."
        )
    n_rows, n_features = shape[0], math.prod(int(s) for s in shape[1:])
    how = (
        f"store it with that shape, or fit dask.array.from_zarr(...).reshape({n_rows}, -1)"
        if stored
        else "reshape it with X.reshape(len(X), -1)"
    )
    return (
        f"To use each of its {n_rows} entries along the first axis as one sample of "
        f"{'×'.join(str(s) for s in shape[1:])} = {n_features} features, make it "
        f"({n_rows}, {n_features}): {how}."
    )


def check_shape(shape: tuple[int, ...], n_components: int | None, name: str = "X") -> None:
    if len(shape) != 2:
        raise ValueError(
            f"{name} must be 2-D (rows × features), got {len(shape)}-D with shape {shape}. "
            + reshape_hint(shape)
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
