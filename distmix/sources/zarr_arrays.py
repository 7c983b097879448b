"""Reading Zarr arrays (v2 or v3, local or through fsspec), loudly where Zarr is silent.

Zarr sources get two checks beyond dtype and shape, because Zarr itself is
silent where a fit must not be:

* before any pass, the chunk keys present in the store are listed (no chunk is
  read) and compared with the chunk grid the array's shape implies: Zarr reads
  an absent chunk as the fill value, so a lost file would otherwise become rows
  of zeros (the v2 default) without a word (:class:`MissingChunkError`);
* every block reads whole Zarr chunks (shards, for sharded arrays) and all
  columns, and an error while reading or decoding it names the rows, the path
  and the chunk (:class:`ChunkReadError`).

Arrays that distmix writes carry a checksum besides
(:mod:`distmix.sources.zarr_write`), so that a damaged chunk fails here instead
of reading as other numbers.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from dask.base import tokenize
from fsspec.registry import known_implementations
from zarr.core.sync import sync  # private API: runs the store's async listing

from distmix.devices import to_block_namespace
from distmix.sources.blocks import check_block_size
from distmix.sources.checks import is_zarr_array

#: how many missing or unreadable chunk keys an error message lists
_KEYS_SHOWN = 5


class MissingChunkError(ValueError):
    """Chunk files that a Zarr array's shape implies are absent from its store.

    Attributes
    ----------
    path : str
        Where the array is.
    keys : tuple of str
        Every missing chunk key (relative to the array, e.g. ``"c/3/0"`` or ``"3.0"``).
    rows : tuple of (int, int)
        ``(start, stop)`` of the rows each missing chunk would hold.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        keys: tuple[str, ...] = (),
        rows: tuple[tuple[int, int], ...] = (),
    ) -> None:
        super().__init__(message)
        self.path = path
        self.keys = tuple(keys)
        self.rows = tuple(rows)


class ChunkReadError(OSError):
    """Reading or decoding a block of a Zarr array failed.

    The message names the block's rows, the path and, when it could be told
    apart, the chunk at fault with the original error (which is also chained
    as ``__cause__`` in the process that raised it; the message carries it
    across a distributed scheduler, which drops the chain).

    Attributes
    ----------
    path : str
    rows : (int, int)
        ``(start, stop)`` of the block's rows.
    key : str or None
        The first chunk of the block that failed to read on its own.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        rows: tuple[int, int] = (0, 0),
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.rows = rows
        self.key = key


def _row_range(start: int, stop: int) -> str:
    """Rows ``start:stop`` as people count them: ``"rows 1400–2099"``."""
    return f"row {start}" if stop - start == 1 else f"rows {start}–{stop - 1}"


def _describe_error(err: BaseException) -> str:
    """``"ValueError: what it said"``, without a final full stop."""
    return f"{type(err).__name__}: {str(err).rstrip('. ')}"


def zarr_location(array: Any) -> str:
    """Where a ``zarr.Array`` lives, for messages: a local path, else the store's URL."""
    store_path = array.store_path
    root = getattr(store_path.store, "root", None)  # LocalStore
    if root is not None:
        root = os.fspath(root)
        return os.path.join(root, store_path.path) if store_path.path else root
    return str(store_path)


def storage_chunk_shape(array: Any) -> tuple[int, ...]:
    """The shape of one stored object: the shard for sharded arrays, else the chunk."""
    return tuple(int(c) for c in (getattr(array, "shards", None) or array.chunks))


#: fsspec backends that distmix offers as an extra, by package: ``pip install 'distmix[s3]'``
BACKEND_EXTRAS = {"s3fs": "s3"}


def missing_backend_error(url: Any, error: ImportError) -> ImportError:
    """The ImportError to raise when opening ``url`` raised ``error``.

    fsspec raises ImportError when the package implementing a URL's protocol
    (s3fs for ``s3://``, gcsfs for ``gs://``) is not installed; then the error
    names that package and the pip command (with distmix's extra where there
    is one). Any other ImportError comes back unchanged.
    """
    text = os.fspath(url) if isinstance(url, (str, os.PathLike)) else ""
    protocol = text.partition("://")[0] if "://" in text else ""
    implementation = known_implementations.get(protocol, {}).get("class", "")
    package = implementation.partition(".")[0]
    if not package or importlib.util.find_spec(package) is not None:
        return error
    extra = BACKEND_EXTRAS.get(package)
    install = (
        f"pip install 'distmix[{extra}]' (or pip install {package})"
        if extra
        else f"pip install {package}"
    )
    return ImportError(
        f"{text}: {protocol}:// URLs need the {package} package, which is not installed; {install}."
    )


def open_zarr_array(
    source: Any, *, storage_options: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """Open ``source`` read-only as a ``zarr.Array``; returns ``(array, location)``.

    ``source`` is a ``zarr.Array`` (returned as is), a local path, or an fsspec
    URL (``file://``, ``s3://``, ... with ``storage_options`` passed to fsspec
    through Zarr). It may point at the array itself, at a group holding exactly
    one 2-D array (anywhere below it), or name the array inside a group after a
    ``#``: ``"data.zarr#train/X"``. ``location`` is the spelling used in error
    messages.

    Raises
    ------
    FileNotFoundError
        Nothing is stored at the path, or the group has no such array.
    ValueError
        A group that holds no 2-D array, or several.
    ImportError
        The package for the URL's protocol (s3fs for ``s3://``, ...) is missing;
        the message names it.
    """
    if is_zarr_array(source):
        return source, zarr_location(source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"A Zarr source is a path, a URL or a zarr.Array, got {type(source).__name__}."
        )
    text = os.fspath(source)
    store, _, component = text.partition("#")
    options: dict[str, Any] = {"mode": "r"}
    if storage_options:
        options["storage_options"] = storage_options
    try:
        if component:
            node = zarr.open(store=store, path=component, **options)
        else:
            node = zarr.open(store=store, **options)
    except FileNotFoundError as err:  # zarr's NodeNotFoundError is one too
        if component:
            raise FileNotFoundError(
                f"No Zarr array {component!r} in {store}: {err}. Arrays there: "
                f"{_describe_arrays(store, options) or 'none'}. Name one after '#', "
                f"as in '{store}#NAME'."
            ) from err
        raise FileNotFoundError(
            f"No Zarr array or group at {text}: {err}. Check the path or URL (and "
            "storage_options for a remote store)."
        ) from err
    except ImportError as err:  # no fsspec backend for the URL's protocol
        raise missing_backend_error(store, err) from err
    if isinstance(node, zarr.Array):
        return node, text
    arrays = [(name, a) for name, a in node.members(max_depth=None) if isinstance(a, zarr.Array)]
    two_d = [(name, a) for name, a in arrays if a.ndim == 2]
    if len(two_d) == 1:
        name, array = two_d[0]
        inner = f"{component.rstrip('/')}/{name}" if component else name
        return array, f"{store}#{inner}"
    listing = ", ".join(f"{name} {a.shape}" for name, a in arrays) or "none"
    which = "no 2-D array" if not two_d else f"{len(two_d)} 2-D arrays"
    raise ValueError(
        f"The Zarr group at {text} holds {which} (arrays: {listing}); distmix reads one "
        f"2-D array of rows × features. Name it after '#', as in '{store}#NAME'."
    )


def _describe_arrays(store: str, options: dict[str, Any]) -> str:
    """``"a (100, 3), g/b (5,)"``: the arrays of the group at ``store`` (error path only)."""
    try:
        group = zarr.open_group(store=store, **options)
        return ", ".join(
            f"{name} {a.shape}"
            for name, a in group.members(max_depth=None)
            if isinstance(a, zarr.Array)
        )
    except Exception:  # the root is not a group either: nothing to list
        return ""


def missing_chunk_keys(array: Any) -> list[tuple[str, int, int]]:
    """Stored objects that a 2-D ``array``'s shape implies but its store lacks.

    Lists the keys under the array's prefix (``Store.list_prefix``; no chunk is
    read) and compares them with the keys of the whole chunk grid, encoded by
    the array's own metadata (``encode_chunk_key``: ``c/0/0`` for the v3
    default encoding, ``0.0`` for v2). For sharded arrays the stored objects
    are the shards; a shard's absent inner chunks are recorded in its index,
    which this check does not read.

    Returns
    -------
    list of (key, row_start, row_stop)
        In grid order.
    """
    store_path = array.store_path
    prefix = f"{store_path.path}/" if store_path.path else ""

    async def present_keys() -> set[str]:
        return {key[len(prefix) :] async for key in store_path.store.list_prefix(prefix)}

    present = sync(present_keys())
    n_rows, n_cols = (int(s) for s in array.shape)
    chunk_rows, chunk_cols = storage_chunk_shape(array)
    missing = []
    for i in range(math.ceil(n_rows / chunk_rows)):
        for j in range(math.ceil(n_cols / chunk_cols)):
            key = array.metadata.encode_chunk_key((i, j))
            if key not in present:
                missing.append((key, i * chunk_rows, min(n_rows, (i + 1) * chunk_rows)))
    return missing


def check_chunks_present(array: Any, location: str, name: str = "X") -> None:
    """Raise :class:`MissingChunkError` if chunk files of ``array`` are absent."""
    missing = missing_chunk_keys(array)
    if not missing:
        return
    n_chunks = math.prod(
        math.ceil(int(s) / c) for s, c in zip(array.shape, storage_chunk_shape(array), strict=True)
    )
    shown = ", ".join(
        f"{key} ({_row_range(start, stop)})" for key, start, stop in missing[:_KEYS_SHOWN]
    )
    more = f" and {len(missing) - _KEYS_SHOWN} more" if len(missing) > _KEYS_SHOWN else ""
    raise MissingChunkError(
        f"{name} at {location}: {len(missing)} of {n_chunks} chunk(s) are missing from the "
        f"store: {shown}{more}. Zarr would read them as the fill value "
        f"({array.fill_value}) without an error. Restore the missing files (copy them "
        "again, or regenerate the dataset); if they were left unwritten on purpose because "
        "they held only the fill value (Zarr's write_empty_chunks=False), pass "
        "missing_chunks='fill'.",
        path=location,
        keys=tuple(key for key, _, _ in missing),
        rows=tuple((start, stop) for _, start, stop in missing),
    )


def zarr_block_rows(
    n_rows: int, chunk_rows: int, block_rows: int | tuple[int, ...] | None, location: str
) -> tuple[int, ...]:
    """Row lengths of blocks that each hold whole Zarr row chunks.

    ``None``: one Zarr row chunk per block. An integer is rounded down to a
    multiple of ``chunk_rows`` (at least one chunk), so that it stays an upper
    bound on a block's rows wherever it can. A tuple of lengths is kept if
    every block starts on a chunk boundary, and refused otherwise.
    """
    checked = check_block_size(block_rows, n_rows)
    if isinstance(checked, tuple):
        starts = np.cumsum((0,) + checked[:-1])
        if np.any(starts % chunk_rows):
            raise ValueError(
                f"block_size={checked!r} cuts through the Zarr chunks of {location} "
                f"({chunk_rows} rows each); give block lengths that are multiples of "
                f"{chunk_rows} (the last may be shorter), or an integer."
            )
        return checked
    step = chunk_rows if checked is None else max(1, checked // chunk_rows) * chunk_rows
    return tuple(min(step, n_rows - start) for start in range(0, n_rows, step))


class ZarrRows:
    """A 2-D Zarr array as dask reads it: ``reader[rows, cols]`` → NumPy, or the
    namespace the Dask config key ``distmix.block-namespace`` names where the read
    runs (:func:`distmix.devices.to_block_namespace`: CuPy on a GPU worker).

    What it adds to the array is the error: any failure while reading or
    decoding becomes a :class:`ChunkReadError` naming the rows, the path and the
    chunk at fault; and the move to the block's namespace, inside the read task,
    so that the rows go from storage to the device without a task of their own.
    """

    ndim = 2

    def __init__(self, array: Any, location: str) -> None:
        self.array = array
        self.location = location
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def __dask_tokenize__(self) -> Any:
        return ("distmix.chunks.ZarrRows", tokenize(self.array), self.location)

    def __getitem__(self, index: Any) -> Any:
        try:
            rows = np.asarray(self.array[index])
        except MemoryError:
            raise
        except Exception as err:
            raise self._read_error(index, err) from err
        return to_block_namespace(rows)

    def _read_error(self, index: Any, err: Exception) -> ChunkReadError:
        rows = index[0] if isinstance(index, tuple) else index
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
        else:
            start, stop = 0, self.shape[0]
        bad = self._first_bad_chunk(start, stop)
        head = f"reading {_row_range(start, stop)} of {self.location} failed"
        if bad is None:
            return ChunkReadError(
                f"{head}: {_describe_error(err)}. Check that the store is reachable (and "
                "storage_options for a remote store).",
                path=self.location,
                rows=(start, stop),
            )
        key, chunk_start, chunk_stop, chunk_err = bad
        return ChunkReadError(
            f"{head}: chunk {key} ({_row_range(chunk_start, chunk_stop)}) could not be "
            f"decoded: {_describe_error(chunk_err)}. The chunk file is corrupt or truncated; "
            "restore it from a copy, or regenerate the dataset.",
            path=self.location,
            rows=(start, stop),
            key=key,
        )

    def _first_bad_chunk(self, start: int, stop: int) -> tuple[str, int, int, Exception] | None:
        """Read the block's chunks one at a time (error path only) to find the culprit."""
        for key, r0, r1, c0, c1 in self._chunks_in(start, stop):
            try:
                self.array[r0:r1, c0:c1]
            except Exception as err:
                return key, r0, r1, err
        return None

    def _chunks_in(self, start: int, stop: int) -> Iterator[tuple[str, int, int, int, int]]:
        chunk_rows, chunk_cols = storage_chunk_shape(self.array)
        n_rows, n_cols = self.shape
        for i in range(start // chunk_rows, math.ceil(stop / chunk_rows)):
            for j in range(math.ceil(n_cols / chunk_cols)):
                yield (
                    self.array.metadata.encode_chunk_key((i, j)),
                    i * chunk_rows,
                    min(n_rows, (i + 1) * chunk_rows),
                    j * chunk_cols,
                    min(n_cols, (j + 1) * chunk_cols),
                )
