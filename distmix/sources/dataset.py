"""One entry for sources on disk or behind a URL: :func:`open_dataset`.

A path, an fsspec URL or an open ``zarr.Array`` becomes a dask array of row
blocks, validated before any pass: a local ``.npy`` path is read by
:mod:`distmix.sources.npy`, anything else as a Zarr array by
:mod:`distmix.sources.zarr_arrays`.
"""

from __future__ import annotations

from typing import Any, Literal

import dask.array as da
import numpy as np
from dask.base import tokenize

from distmix.sources.checks import check_dtype, check_shape, reshape_hint
from distmix.sources.npy import is_npy_path, open_npy
from distmix.sources.zarr_arrays import (
    ZarrRows,
    check_chunks_present,
    open_zarr_array,
    storage_chunk_shape,
    zarr_block_rows,
)

#: what :func:`open_dataset` does about chunk files absent from the store
MissingChunks = Literal["raise", "fill"]
MISSING_CHUNKS: tuple[MissingChunks, ...] = ("raise", "fill")


def open_dataset(
    path_or_url: Any,
    *,
    storage_options: dict[str, Any] | None = None,
    block_rows: int | tuple[int, ...] | None = None,
    name: str = "X",
    missing_chunks: MissingChunks = "raise",
) -> Any:
    """Open a 2-D Zarr array (v2 or v3) as a dask array of row blocks, validated.

    A local path ending in ``.npy`` is opened by :func:`distmix.sources.npy.open_npy`
    instead (blocks read from the memory-mapped file inside the tasks).

    Parameters
    ----------
    path_or_url : str, os.PathLike or zarr.Array
        A local path, an fsspec URL (``file://``, ``s3://``, ...) or an open
        array. The path may be that of the array, of a group holding exactly one
        2-D array, or ``"store.zarr#group/array"`` naming the array in a group.
    storage_options : dict, optional
        Passed through Zarr to fsspec for a URL (credentials, endpoint, ...).
    block_rows : int or tuple of int, optional
        Rows per block. ``None``: one Zarr row chunk (shard, for sharded arrays)
        per block. An integer is rounded down to a multiple of the Zarr row
        chunk (at least one chunk); a tuple of lengths must start every block on
        a chunk boundary.
    name : str, default="X"
        What error messages call the data (``"X at data.zarr has dtype ..."``).
    missing_chunks : {"raise", "fill"}, default="raise"
        ``"raise"``: list the chunk keys in the store now (no chunk is read)
        and raise :class:`~distmix.sources.zarr_arrays.MissingChunkError` if
        any chunk of the grid is absent.
        ``"fill"``: skip the check and let Zarr read absent chunks as the fill
        value, for arrays written with ``write_empty_chunks=False`` on purpose.

    Returns
    -------
    dask.array.Array of shape (n_rows, n_features)
        One chunk along the columns; each row block holds whole Zarr chunks, so
        each task reads every stored object it needs exactly once. A failure
        while reading a block raises
        :class:`~distmix.sources.zarr_arrays.ChunkReadError` naming its rows,
        the path and the chunk. Non-finite values are found by the fit's first
        pass, which names the first bad row by its global index. The blocks are
        NumPy arrays (the array's meta), or CuPy arrays on the GPU of the worker
        that reads them where the Dask config key ``distmix.block-namespace`` is
        ``"cupy"`` there (:mod:`distmix.devices`).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path_or_url``.
    ValueError
        The array is not 2-D, has no rows or no columns, or a group holds no
        2-D array or several; ``block_rows`` cuts through chunks.
    TypeError
        The dtype is not numeric.
    MissingChunkError
        Chunk files absent from the store (``missing_chunks="raise"``).
    """
    if missing_chunks not in MISSING_CHUNKS:
        raise ValueError(
            f"missing_chunks={missing_chunks!r} is not one of "
            f"{', '.join(repr(m) for m in MISSING_CHUNKS)}."
        )
    if is_npy_path(path_or_url):  # a local .npy file: read by block in the tasks too
        return open_npy(path_or_url, block_rows=block_rows, name=name)
    array, location = open_zarr_array(path_or_url, storage_options=storage_options)
    described = f"{name} at {location}"
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{described} is a {len(shape)}-D Zarr array of shape {shape}; distmix needs a 2-D "
            f"array of rows × features. {reshape_hint(shape, stored=True)}"
        )
    check_dtype(array.dtype, described)
    check_shape(shape, None, described)
    if missing_chunks == "raise":
        check_chunks_present(array, location, name)
    rows = zarr_block_rows(shape[0], storage_chunk_shape(array)[0], block_rows, location)
    reader = ZarrRows(array, location)
    return da.from_array(
        reader,
        chunks=(rows, (shape[1],)),
        name="distmix-zarr-" + tokenize(reader, rows),
        lock=False,
        asarray=False,  # the reader makes the block (NumPy, or the block namespace's)
        fancy=False,
        meta=np.empty((0, 0), dtype=reader.dtype),
    )
