"""Sources → row blocks, and the validation that rides along.

A source is a NumPy (or other array-API) array, a dask array or a Zarr array
(an open ``zarr.Array``, or a path or fsspec URL opened by :func:`open_dataset`).
Whatever it is, distmix sees it as row blocks holding all columns. Shape and
dtype are checked here before any pass; finiteness is checked in the first pass
itself (the kernels count non-finite rows and remember the first one), and
:func:`raise_if_nonfinite` turns those counts into an error.

Zarr sources get three more checks, because Zarr itself is silent where a fit
must not be:

* before any pass, the chunk keys present in the store are listed (no chunk is
  read) and compared with the chunk grid the array's shape implies: Zarr reads
  an absent chunk as the fill value, so a lost file would otherwise become rows
  of zeros (the v2 default) without a word (:class:`MissingChunkError`);
* every block reads whole Zarr chunks (shards, for sharded arrays) and all
  columns, and an error while reading or decoding it names the rows, the path
  and the chunk (:class:`ChunkReadError`);
* arrays distmix writes (:func:`create_zarr_array`) carry a CRC-32C checksum as
  the last codec and NaN as fill value, so a truncated or bit-flipped chunk
  fails its checksum and a chunk that is absent anyway reads as NaN, which the
  first pass reports: never wrong numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

#: aim for this many bytes in a block's (rows, D) float64 copy: about one L2 cache
TARGET_BLOCK_BYTES = 2**20


class NonFiniteInputError(ValueError):
    """The input holds NaN or infinity."""


def is_dask_array(x: Any) -> bool:
    return type(x).__module__.startswith("dask.array") and hasattr(x, "chunks")


def is_zarr_array(x: Any) -> bool:
    return type(x).__module__.startswith("zarr") and hasattr(x, "chunks") and hasattr(x, "store")


def is_zarr_source(x: Any) -> bool:
    """A ``zarr.Array``, or a path / URL (or ``.npy`` path) that :func:`open_dataset` opens."""
    return is_zarr_array(x) or isinstance(x, (str, os.PathLike))


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


def as_dask_rows(X: Any, block_rows: int | tuple[int, ...] | None = None) -> Any:
    """A dask array (from a dask array or a Zarr source) with all columns in one chunk.

    Zarr sources (a ``zarr.Array``, a path or a URL) go through
    :func:`open_dataset`: each block reads whole Zarr chunks and ``block_rows``
    is rounded down to a multiple of the Zarr row chunk.
    """
    if is_zarr_source(X):
        return open_dataset(X, block_rows=block_rows)
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


# -- Zarr sources ----------------------------------------------------------------
#: what :func:`open_dataset` does about chunk files absent from the store
MissingChunks = Literal["raise", "fill"]
MISSING_CHUNKS: tuple[MissingChunks, ...] = ("raise", "fill")

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
    import importlib.util

    from fsspec.registry import known_implementations

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
    import zarr

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
    import zarr

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
    from zarr.core.sync import sync

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
    """A 2-D Zarr array as dask reads it: ``reader[rows, cols]`` → NumPy.

    The only thing it adds to the array is the error: any failure while reading
    or decoding becomes a :class:`ChunkReadError` naming the rows, the path and
    the chunk at fault.
    """

    ndim = 2

    def __init__(self, array: Any, location: str) -> None:
        self.array = array
        self.location = location
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("distmix.chunks.ZarrRows", tokenize(self.array), self.location)

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[index])
        except MemoryError:
            raise
        except Exception as err:
            raise self._read_error(index, err) from err

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


def open_dataset(
    path_or_url: Any,
    *,
    storage_options: dict[str, Any] | None = None,
    block_rows: int | tuple[int, ...] | None = None,
    name: str = "X",
    missing_chunks: MissingChunks = "raise",
) -> Any:
    """Open a 2-D Zarr array (v2 or v3) as a dask array of row blocks, validated.

    A local path ending in ``.npy`` is opened by :func:`distmix.npy.open_npy`
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
        and raise :class:`MissingChunkError` if any chunk of the grid is absent.
        ``"fill"``: skip the check and let Zarr read absent chunks as the fill
        value, for arrays written with ``write_empty_chunks=False`` on purpose.

    Returns
    -------
    dask.array.Array of shape (n_rows, n_features)
        One chunk along the columns; each row block holds whole Zarr chunks, so
        each task reads every stored object it needs exactly once. A failure
        while reading a block raises :class:`ChunkReadError` naming its rows,
        the path and the chunk. Non-finite values are found by the fit's first
        pass, which names the first bad row by its global index.

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
    import dask.array as da
    from dask.base import tokenize

    if missing_chunks not in MISSING_CHUNKS:
        raise ValueError(
            f"missing_chunks={missing_chunks!r} is not one of "
            f"{', '.join(repr(m) for m in MISSING_CHUNKS)}."
        )
    from distmix.npy import is_npy_path, open_npy

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
        asarray=True,
        fancy=False,
        meta=np.empty((0, 0), dtype=reader.dtype),
    )


def create_zarr_array(
    store: Any,
    shape: tuple[int, int],
    chunks: int | tuple[int, int],
    dtype: Any = np.float64,
    *,
    zarr_format: Literal[2, 3] = 3,
    compressors: Any = None,
    shards: tuple[int, int] | None = None,
    attributes: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Create an empty 2-D float Zarr array whose corruption cannot go unnoticed.

    * The last codec is a CRC-32C checksum of the stored bytes (v3: the
      ``crc32c`` codec after any compressor; v2: the ``crc32c`` compressor), so
      a truncated or bit-flipped chunk fails to decode instead of reading as
      other numbers.
    * The fill value is NaN, so a chunk that is absent anyway reads as NaN,
      which a fit reports, instead of zeros; every chunk is written, even one
      that holds only NaN (``write_empty_chunks``), so absence means loss.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        Where to create it (a path or an fsspec URL).
    shape : (n_rows, n_features)
    chunks : int or (int, int)
        Rows per chunk (all columns in one chunk), or the full chunk shape.
    dtype : float dtype, default=float64
    zarr_format : {2, 3}, default=3
    compressors : bytes-to-bytes codecs, optional
        Run before the checksum (v3 only). ``None``: no compression, because
        Gaussian float data barely compress (zstd saves about 5% on float64
        noise) while decoding them costs several times the read.
    shards : (int, int), optional
        Shard shape (v3 only): the stored objects then hold several chunks.
    attributes : dict, optional
    storage_options : dict, optional
        For an fsspec URL.
    overwrite : bool, default=False

    Returns
    -------
    zarr.Array
    """
    import zarr

    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(
            f"create_zarr_array writes float arrays (NaN is the fill value), got dtype {dt}."
        )
    if len(shape) != 2:
        raise ValueError(f"shape must be (n_rows, n_features), got {shape}.")
    chunk_shape = (int(chunks), int(shape[1])) if isinstance(chunks, (int, np.integer)) else chunks
    if zarr_format == 3:
        from zarr.codecs import Crc32cCodec

        if compressors is None:
            extra: list[Any] = []
        elif isinstance(compressors, (list, tuple)):
            extra = list(compressors)
        else:
            extra = [compressors]
        codecs: Any = (*extra, Crc32cCodec())
    elif zarr_format == 2:
        if compressors is not None or shards is not None:
            raise ValueError(
                "Zarr v2 arrays hold the checksum in their single compressor slot and have no "
                "shards: leave compressors and shards as None, or write zarr_format=3."
            )
        from numcodecs import CRC32C

        codecs = CRC32C()
    else:
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}.")
    options: dict[str, Any] = {}
    if storage_options:
        options["storage_options"] = storage_options
    if shards is not None:
        options["shards"] = tuple(shards)
    try:
        return zarr.create_array(
            store=store,
            shape=tuple(int(s) for s in shape),
            chunks=tuple(int(c) for c in chunk_shape),
            dtype=dt,
            fill_value=np.nan,
            compressors=codecs,
            zarr_format=zarr_format,
            attributes=attributes,
            overwrite=overwrite,
            config={"write_empty_chunks": True},
            **options,
        )
    except ImportError as err:  # no fsspec backend for the URL's protocol
        raise missing_backend_error(store, err) from err
