"""Predicted outputs (labels, responsibilities, log-densities) written all or nothing.

A prediction is written into a hidden temporary sibling of the user's path
(``.NAME.tmp-XXXXXXXX`` in the same directory, hence on the same file system)
and renamed onto that path only after every block was computed and written and
the files were flushed to disk. A reader therefore finds either no output or a
complete one, never a partial one, even when the writer is killed (SIGKILL, a
power cut) mid-write. On an error or Ctrl-C the temporary is removed (on a
cluster only once no task of the write can still write a chunk into it, see
:func:`_store_on_cluster`); a ``SIGKILL`` leaves it behind under its hidden
name, where nothing reads it.

* Zarr arrays end their codec chain with a CRC-32C checksum, as the datasets
  of :mod:`distmix.sources.zarr_write` do, and their fill value cannot be mistaken for
  data: NaN for float outputs, -1 for labels. Every chunk is written.
* ``.npy`` files are written through a temporary file, fsync, ``os.replace``.
* An existing output is refused unless ``overwrite``; with it, the old output
  is replaced only once the new one is complete (a file by ``os.replace``; a
  directory is renamed aside, the new one renamed in, then the old deleted).

:func:`check_output_path` validates the path before any work, with the checks
every path distmix writes shares (:mod:`distmix._paths`): local paths only, parent
directories that do not exist yet are created when writing (and removed again if
the write fails), the nearest existing directory must be writable, and errors name
the user's path and how it was given, never a temporary one.

Glue, not a kernel: this module touches files and schedulers and nothing below
it imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from distributed import Event, as_completed, wait
from zarr.codecs import Crc32cCodec

from distmix._paths import check_writable, is_url, named, overwrite_hint


def is_npy_path(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` names a ``.npy`` file (anything else is written as a Zarr array)."""
    return os.fspath(out).endswith(".npy")


def _same_or_inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside the directory ``b`` (both resolved)."""
    return a == b or b in a.parents


def check_output_path(
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Mapping[str, str | os.PathLike[str]] | None = None,
    what: str = "--out",
) -> Path:
    """Refuse an output path that cannot or must not be written, before any work.

    Parameters
    ----------
    out : str or os.PathLike
        The user's output path: a ``.npy`` file or a Zarr array (a directory). Its
        parent directories need not exist: writing creates them.
    overwrite : bool, default=False
        Whether an existing output there may be replaced (it must then be of
        the same kind: a file for ``.npy``, a Zarr array directory otherwise).
    inputs : mapping of str to path, optional
        What the command reads, by role (``{"MODEL": ..., "DATA": ...}``): the
        output may be none of them, lie inside none of them and contain none of
        them (replacing it would delete an input). URLs among them are skipped.
    what : str, default="--out"
        How the user gave ``out``, for the messages: an option (``"--out"``), ``""``
        for a command-line argument given by position, or a Python argument's name.

    Returns
    -------
    pathlib.Path
        ``out`` made absolute (its parent resolved).

    Raises
    ------
    ValueError
        ``out`` is a URL, or is (or contains, or lies in) one of ``inputs``.
    FileExistsError
        Something exists at ``out`` and ``overwrite`` is false, or it is not an
        output of the same kind.
    NotADirectoryError, PermissionError
        The nearest existing ancestor of ``out`` is a file, or no file can be
        created in it (found by trying: permission bits do not stop root).
    """
    text = os.fspath(out)
    label = named(what, text)
    if is_url(text):
        raise ValueError(
            f"{label}: only local output paths are supported for now; write to a local "
            "path and copy the result (for example with fsspec or the cloud's CLI)."
        )
    given = Path(text)
    if given.name in ("", ".", ".."):
        raise ValueError(f"{label}: not a file or directory name for the output.")
    target = given.parent.resolve() / given.name
    for role, path in (inputs or {}).items():
        source = os.fspath(path)
        if is_url(source):
            continue
        resolved = Path(source).resolve()
        if _same_or_inside(target, resolved) or _same_or_inside(resolved, target.resolve()):
            raise ValueError(
                f"{label}: the output would overwrite or lie inside {role} ({source}); "
                "choose another path."
            )
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"{label} already exists; pass {overwrite_hint(what)} to replace it (the old "
                "output is kept until the new one is complete), or choose another path."
            )
        _check_replaceable(target, label, what)
    check_writable(target, what=what, text=text)
    return target


def _check_replaceable(target: Path, label: str, what: str) -> None:
    """With ``overwrite``, replace only an output of the same kind: never a
    directory by a ``.npy`` file, nor a directory that is not a Zarr array."""
    if target.is_symlink():
        raise FileExistsError(f"{label} is a symbolic link; remove it or choose another path.")
    if is_npy_path(target):
        if not target.is_file():
            raise FileExistsError(f"{label} exists and is not a file; it is not replaced.")
    elif not _is_zarr_array(target):
        raise FileExistsError(
            f"{label} exists and is not a Zarr array; it is not replaced even with "
            f"{overwrite_hint(what)} (remove it yourself if it is yours to delete)."
        )


def _is_zarr_array(path: Path) -> bool:
    """Whether ``path`` holds a Zarr array (v3 or v2), not a group or anything else."""
    if (path / ".zarray").is_file():
        return True
    try:
        return bool(json.loads((path / "zarr.json").read_text()).get("node_type") == "array")
    except (OSError, ValueError, AttributeError):
        return False


def create_output_array(
    store: str | os.PathLike[str],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    *,
    attributes: dict[str, Any] | None = None,
) -> Any:
    """An empty Zarr v3 array for a prediction, checksummed and with a telling fill value.

    Parameters
    ----------
    store : str or os.PathLike
        A local directory that holds no array yet.
    shape, chunks : tuple of int
        ``(n_rows,)`` for labels and log-densities, ``(n_rows, K)`` for
        responsibilities; chunks hold whole rows.
    dtype : integer or float dtype
    attributes : dict, optional

    Returns
    -------
    zarr.Array
        Codecs: bytes then CRC-32C (a flipped or truncated chunk fails to decode);
        fill value -1 for integers (never a component index) and NaN for floats;
        empty chunks are written too, so a missing chunk means loss.
    """
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        fill: Any = -1
    elif dt.kind == "f":
        fill = np.nan
    else:
        raise ValueError(f"predictions are integer labels or floats, got dtype {dt}.")
    return zarr.create_array(
        store=os.fspath(store),
        shape=tuple(int(s) for s in shape),
        chunks=tuple(int(c) for c in chunks),
        dtype=dt,
        fill_value=fill,
        compressors=(Crc32cCodec(),),
        zarr_format=3,
        attributes=attributes,
        config={"write_empty_chunks": True},
    )


def write_output(
    out: str | os.PathLike[str],
    result: Any,
    *,
    overwrite: bool = False,
    client: Any = None,
    attributes: dict[str, Any] | None = None,
    what: str = "--out",
) -> Path:
    """Compute ``result`` and write it to ``out``, all or nothing.

    Parameters
    ----------
    out : str or os.PathLike
        A local ``.npy`` file or Zarr array, checked by :func:`check_output_path`
        (call that earlier too, before any work, to fail fast).
    result : dask.array.Array or numpy.ndarray, shape (n_rows,) or (n_rows, K)
        The prediction; a dask array is computed block by block while it is
        written (out of core for Zarr, and for ``.npy`` without ``client``).
    overwrite : bool, default=False
    client : distributed.Client, optional
        The cluster ``result`` is computed on; ``None``: Dask's threads in this
        process. Zarr chunks are then written by the workers, which must see the
        output's directory (as they see the data's).
    attributes : dict, optional
        Stored with a Zarr output.
    what : str, default="--out"
        How the user gave ``out``, for the messages (see :func:`check_output_path`).

    Returns
    -------
    pathlib.Path
        The output's absolute path.
    """
    text = os.fspath(out)
    target = check_output_path(text, overwrite=overwrite, what=what)
    label = named(what, text)
    npy = is_npy_path(target)
    with _staged(target, label, directory=not npy) as tmp:
        if npy:
            _write_npy(tmp, result, client)
        else:
            _write_zarr(tmp, result, client, attributes)
        _fsync_tree(tmp)
        _publish(tmp, target, label, overwrite=overwrite)
    return target


@contextlib.contextmanager
def staged_directory(
    out: str | os.PathLike[str], *, overwrite: bool = False, what: str = ""
) -> Iterator[Path]:
    """A hidden temporary directory beside ``out`` to write a Zarr array into; renamed
    onto ``out`` (after a flush to disk) when the ``with`` block succeeds, removed when
    it raises. ``out`` is checked first, as :func:`check_output_path` does; ``what``
    defaults to a command-line argument given by position (``distmix generate OUT``)."""
    text = os.fspath(out)
    target = check_output_path(text, overwrite=overwrite, what=what)
    label = named(what, text)
    with _staged(target, label, directory=True) as tmp:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, target, label, overwrite=overwrite)


def _hidden_sibling(target: Path, tag: str) -> str:
    return f".{target.name}.{tag}-"


@contextlib.contextmanager
def _staged(target: Path, label: str, *, directory: bool) -> Iterator[Path]:
    """A hidden temporary beside ``target``, removed unless it was renamed onto it.

    Parent directories of ``target`` that do not exist yet are created first, and
    removed again (those still empty) when the write fails. An error of the file
    system about the temporary is raised again naming the user's path (``label``)
    instead; other errors (a bad row, an unreadable chunk of the data) pass unchanged.
    """
    prefix = _hidden_sibling(target, "tmp")
    created = _make_parents(target.parent, label)
    tmp: Path | None = None
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".npy", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
        # mkdtemp/mkstemp make private temporaries (0o700/0o600); the output gets
        # the permissions any new file or directory gets here (the umask's)
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod((0o777 if directory else 0o666) & ~umask)
        yield tmp
    except OSError as error:
        _discard(tmp, created)
        if prefix not in f"{error} {error.filename} {error.filename2}":
            raise
        raise type(error)(
            f"{label}: writing the output failed ({error.strerror or type(error).__name__}); "
            "nothing was written there"
        ) from None
    except BaseException:
        _discard(tmp, created)
        raise


def _make_parents(directory: Path, label: str) -> list[Path]:
    """Create ``directory`` and its missing ancestors; return those this call created,
    outermost first (as ``model.save`` does, an output may go into a new directory)."""
    missing = []
    while not (directory.exists() or directory.is_symlink()):
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as error:
            if isinstance(error, FileExistsError) and path.is_dir():
                continue  # made meanwhile by someone else: not ours to remove
            _discard(None, created)
            raise type(error)(
                f"{label}: cannot create its directory {path} ({error.strerror or error})"
            ) from None
        created.append(path)
    return created


def _discard(tmp: Path | None, created: list[Path]) -> None:
    """Remove a failed write's temporary, then the directories made for it that are
    still empty (innermost first; one that holds anything else stays)."""
    if tmp is not None:
        _remove(tmp)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    """Flush a file, or every file and directory under ``path``, to disk, so that
    the rename publishes data that survive a crash of the machine too."""
    paths = [path] if path.is_file() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    if path.is_dir():
        paths += [Path(d) for d, _, _ in os.walk(path)]
    for item in paths:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, label: str, *, overwrite: bool) -> None:
    """Rename the complete temporary onto ``target``.

    A file replaces a file atomically (``os.replace``). A directory cannot
    replace a non-empty one, so an old output is renamed aside first, the new
    one renamed in, and the old one deleted last; if the second rename fails,
    the old output is put back.
    """
    if tmp.is_file():
        if not overwrite and target.exists():
            raise FileExistsError(f"{label} appeared while the output was being written.")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return
    aside = None
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{label} appeared while the output was being written.")
        aside = target.parent / f"{_hidden_sibling(target, 'old')}{secrets.token_hex(4)}"
        os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        if aside is not None:
            os.rename(aside, target)
        raise
    _fsync_dir(target.parent)
    if aside is not None:
        _remove(aside)


def _write_npy(tmp: Path, result: Any, client: Any) -> None:
    """A ``.npy`` of ``result``: stored block by block into a memory map when the
    blocks run in this process, else gathered here and saved."""
    if client is None and hasattr(result, "dask"):
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=result.dtype, shape=result.shape)
        try:
            _store(result, array, client)
            array.flush()
        finally:
            del array
        return
    values = np.asarray(result.compute() if hasattr(result, "dask") else result)
    with open(tmp, "wb") as handle:
        np.lib.format.write_array(handle, values, allow_pickle=False)


def _write_zarr(tmp: Path, result: Any, client: Any, attributes: dict[str, Any] | None) -> None:
    data = result if hasattr(result, "dask") else da.from_array(np.asarray(result))
    rows = max(data.chunks[0]) if data.shape[0] else 1
    if any(c != rows for c in data.chunks[0][:-1]):  # zarr chunks are regular
        data = data.rechunk({0: rows})
    data = data.rechunk({i: -1 for i in range(1, data.ndim)})  # whole rows per chunk
    chunks = (rows, *data.shape[1:])
    array = create_output_array(tmp, data.shape, chunks, data.dtype, attributes=attributes)
    _store(data, array, client)


def _store(data: Any, target: Any, client: Any) -> None:
    """``data`` stored into ``target`` block by block, the blocks never overlapping a chunk.

    When a block fails, others may still be writing; they must end before the
    temporary is removed, or a late one would create it again. Without a cluster
    the blocks run on a thread pool of our own, shut down (waiting for blocks still
    running) before returning or raising; on a cluster, see :func:`_store_on_cluster`.
    """
    if client is not None:
        _store_on_cluster(data, target, client)
        return
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        da.store(data, target, lock=False, scheduler="threads", pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _store_on_cluster(data: Any, target: Any, client: Any) -> None:
    """Store ``data`` into ``target`` on the workers of ``client``: one task per block,
    which computes the block and writes it, and one future per task.

    Cancelling a failed write is not enough: the scheduler forgets a cancelled task
    at once while the worker thread running it goes on, and would write its chunk
    into the temporary after it was removed, creating it again. So every task checks
    a stop flag (a :class:`distributed.Event` on the scheduler) right before it
    writes. When a block fails (or on Ctrl-C), :func:`_stop_writing` sets the flag,
    waits for every task the scheduler had handed to a worker at that moment (each
    either wrote before the flag was set or skips its write), and cancels the others
    (never started, or starting after the flag: they skip); only then does the error
    reach the caller, which removes the temporary.
    """
    token = secrets.token_hex(8)
    flag = f"distmix-stop-writing-{token}"
    written = data.map_blocks(
        _write_block,
        target=target,
        flag=flag,
        name=f"distmix-write-{token}",
        chunks=tuple((1,) * len(sizes) for sizes in data.chunks),
        dtype=bool,
        meta=np.empty((0,) * data.ndim, dtype=bool),
    )
    futures = client.compute(list(written.to_delayed().ravel()))
    try:
        for future in as_completed(futures):
            future.result()  # raises the first failed block's error
    except BaseException:
        _stop_writing(client, futures, flag)
        raise
    client.cancel(futures)


def _write_block(block: np.ndarray, *, target: Any, flag: str, block_info: Any = None) -> Any:
    """Write one computed block where it lies in ``target``, unless the write was
    stopped (``flag`` set); a task of :func:`_store_on_cluster`."""
    done = np.ones((1,) * block.ndim, dtype=bool)
    if Event(flag).is_set():  # the write failed elsewhere: its temporary is going away
        return ~done
    region = tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])
    target[region] = block
    return done


def _stop_writing(client: Any, futures: list[Any], flag: str) -> None:
    """After a failure: return once no task of ``futures`` can write any more.

    The flag is set first, then the tasks the scheduler has handed to workers are
    listed. A task that passed its check before the flag was set is among them (it
    is still processing) and is waited for; any other checks after the flag and
    skips its write, including one handed out between the listing and its
    cancellation; for that reason the flag stays set (a name on the scheduler).
    """
    try:
        Event(flag, client=client).set()
        handed_out = {_task_key(key) for keys in client.processing().values() for key in keys}
    except Exception:  # the scheduler is gone: no worker gets or reports tasks any more
        return
    running = [future for future in futures if future.key in handed_out]
    client.cancel([future for future in futures if future.key not in handed_out])
    wait(running)
    client.cancel(running)


def _task_key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
