"""``.npy`` files as row blocks read inside the tasks, like Zarr chunks.

:func:`open_npy` reads only the file's header (never the data, never a pickle),
checks it, and returns a dask array whose every task maps the file read-only,
copies its own rows out and unmaps it. The task graph therefore holds the
path, the header's facts and the row ranges: a few hundred bytes per block,
whatever the file's size, and the client never holds the rows. (Wrapping
``np.load(path, mmap_mode="r")`` in ``da.from_array`` instead puts the memmap
in the graph, which a distributed client pickles as the whole array.)

The path is made absolute here, so that workers started in another directory
find the file; on a cluster of several machines it must be on a file system
that every worker sees, as for a local Zarr path.
"""

from __future__ import annotations

import os
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from numpy.lib import format as npy_format

from distmix.devices import to_block_namespace
from distmix.sources.blocks import check_block_size
from distmix.sources.checks import check_dtype, check_shape
from distmix.sources.zarr_arrays import ChunkReadError, _describe_error, _row_range

#: default block: about this many bytes of the file's rows (as ``distmix fit`` always did)
NPY_BLOCK_BYTES = 2**23


def is_npy_path(source: Any) -> bool:
    """A local path (``str`` or ``os.PathLike``, not a URL) ending in ``.npy``."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    return text.endswith(".npy") and "://" not in text and not os.path.isdir(text)


def read_npy_header(path: str, name: str = "X") -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` from a ``.npy`` file's header.

    Reads the magic string and the header only (``numpy.lib.format``), so an
    object array is recognised without unpickling anything.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a ``.npy`` file (bad magic string or header), or a file shorter
        than its header says.
    """
    described = f"{name} at {path}"
    if not os.path.isfile(path):
        what = "a directory" if os.path.isdir(path) else "no such file"
        raise FileNotFoundError(f"{path}: {what}; {name} must be a .npy file.")
    try:
        with open(path, "rb") as file:
            version = npy_format.read_magic(file)
            if version == (1, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
            else:  # 3.0: a utf-8 header, read by the private reader numpy itself uses
                read_header = npy_format._read_array_header  # type: ignore[attr-defined]
                shape, fortran_order, dtype = read_header(file, version)
            offset = file.tell()
    except (ValueError, EOFError, SyntaxError) as err:
        raise ValueError(
            f"{described} is not a readable .npy file ({_describe_error(err)}); write it "
            "with numpy.save."
        ) from err
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not dtype.hasobject and os.path.getsize(path) < expected:
        raise ValueError(
            f"{described} is truncated: its header describes {shape} {dtype} "
            f"({expected:,} bytes with the header) but the file has "
            f"{os.path.getsize(path):,} bytes. Write it again."
        )
    return shape, dtype, bool(fortran_order), offset


class NpyRows:
    """A 2-D ``.npy`` file as dask reads it: ``reader[rows, cols]`` → NumPy (or the
    namespace ``distmix.block-namespace`` names where the read runs, as for Zarr).

    Pickles as the path and the header's facts. Each read maps the file, copies
    the rows asked for (in native byte order) and unmaps it; a failure names the
    rows and the path (:class:`~distmix.sources.zarr_arrays.ChunkReadError`). Its dask token
    includes the file's size and modification time, so a rewritten file is a
    new source.
    """

    ndim = 2

    def __init__(
        self, path: str, shape: tuple[int, int], dtype: np.dtype, fortran_order: bool, offset: int
    ) -> None:
        self.path = path
        self.shape = shape
        self.file_dtype = dtype
        self.dtype = dtype.newbyteorder("=")
        self.fortran_order = fortran_order
        self.offset = offset
        stat = os.stat(path)
        self._stamp = (stat.st_size, stat.st_mtime_ns)

    def __dask_tokenize__(self) -> Any:
        return ("distmix.npy.NpyRows", self.path, self.shape, str(self.file_dtype), self._stamp)

    def __getitem__(self, index: Any) -> Any:
        return to_block_namespace(self._read(index))

    def _read(self, index: Any) -> np.ndarray:
        try:
            mapped = np.memmap(
                self.path,
                dtype=self.file_dtype,
                mode="r",
                offset=self.offset,
                shape=self.shape,
                order="F" if self.fortran_order else "C",
            )
            try:
                return np.array(mapped[index], dtype=self.dtype, order="C")
            finally:
                mm = getattr(mapped, "_mmap", None)
                del mapped
                if mm is not None:
                    mm.close()
        except MemoryError:
            raise
        except Exception as err:
            rows = index[0] if isinstance(index, tuple) else index
            start, stop = (
                rows.indices(self.shape[0])[:2] if isinstance(rows, slice) else (0, self.shape[0])
            )
            raise ChunkReadError(
                f"reading {_row_range(start, stop)} of {self.path} failed: "
                f"{_describe_error(err)}. Check that every worker sees the file at this "
                "path and that it was not rewritten or truncated during the fit.",
                path=self.path,
                rows=(start, stop),
            ) from err


def npy_block_rows(n_rows: int, row_bytes: int, block_rows: Any) -> tuple[int, ...]:
    """Row lengths of the blocks: ``block_rows`` checked, or about 8 MiB of rows each."""
    checked = check_block_size(block_rows, n_rows)
    if isinstance(checked, tuple):
        return checked
    step = checked if checked is not None else max(1, NPY_BLOCK_BYTES // max(1, row_bytes))
    step = min(step, n_rows)
    return tuple(min(step, n_rows - start) for start in range(0, n_rows, step))


def open_npy(
    path: str | os.PathLike[str],
    *,
    block_rows: int | tuple[int, ...] | None = None,
    name: str = "X",
) -> Any:
    """Open a 2-D ``.npy`` file as a dask array of row blocks read inside the tasks.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file written by ``numpy.save`` (C or Fortran order, any
        byte order).
    block_rows : int or tuple of int, optional
        Rows per block, or the blocks' lengths. ``None``: about 8 MiB of the
        file's rows per block.
    name : str, default="X"
        What error messages call the data.

    Returns
    -------
    dask.array.Array of shape (n_rows, n_features)
        One chunk along the columns; its dtype is the file's, in native byte order.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a ``.npy`` file, truncated, not 2-D, no rows or no columns, or a
        bad ``block_rows``.
    TypeError
        A dtype that is not numeric, among them object arrays (which are never
        unpickled).
    """
    location = os.path.abspath(os.fspath(path))
    shape, dtype, fortran_order, offset = read_npy_header(location, name)
    described = f"{name} at {os.fspath(path)}"
    if dtype.hasobject:
        raise TypeError(
            f"{described} holds Python objects (dtype {dtype}), stored as a pickle; distmix "
            "never unpickles input. Save the rows as a float array: "
            "numpy.save(path, np.asarray(rows, dtype=np.float64))."
        )
    if len(shape) != 2:
        hint = (
            "save a single feature with shape (n_rows, 1): X.reshape(-1, 1)"
            if len(shape) == 1
            else "reshape it to rows × features before saving, e.g. X.reshape(len(X), -1)"
        )
        raise ValueError(
            f"{described} is a {len(shape)}-D array of shape {shape}; distmix needs a 2-D "
            f"array of rows × features ({hint})."
        )
    check_dtype(dtype, described)
    check_shape(shape, None, described)
    n_rows, n_features = shape
    reader = NpyRows(location, (n_rows, n_features), dtype, fortran_order, offset)
    rows = npy_block_rows(n_rows, n_features * dtype.itemsize, block_rows)
    return da.from_array(
        reader,
        chunks=(rows, (n_features,)),
        name="distmix-npy-" + tokenize(reader, rows),
        lock=False,
        asarray=False,  # the reader makes the block (NumPy, or the block namespace's)
        fancy=False,
        meta=np.empty((0, 0), dtype=reader.dtype),
    )
