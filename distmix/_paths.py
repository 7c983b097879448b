"""Where distmix may write: the checks every written path shares.

One policy for model files and checkpoints (:func:`distmix.persist.check_file_target`)
and for predicted or generated outputs (:func:`distmix.outputs.check_output_path`):

* local paths only (:func:`is_url` tells a URL);
* a parent directory that does not exist yet is accepted and created when the file
  is written; what must be writable is the nearest directory that exists
  (:func:`check_writable`), found by creating and removing a file there, since
  permission bits do not stop root and a read-only mount stops everyone;
* errors name the path as the user gave it and how it was given (:func:`named`),
  never a temporary's name, and say how to replace an existing file
  (:func:`overwrite_hint`).

What may be replaced (file kinds for models and checkpoints, only a Zarr array for
an output) stays with each caller.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_URL_PREFIXES = ("s3:", "gs:", "gcs:", "az:", "abfs:")


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote store (``scheme://…`` or a bucket scheme)."""
    return "://" in path or path.startswith(_URL_PREFIXES)


def named(what: str, text: str) -> str:
    """The user's path as errors name it: ``"--out m.npz"``, ``"checkpoint fit.ck"``;
    just the path when ``what`` is empty (a command-line argument given by position)."""
    return f"{what} {text}" if what else text


def overwrite_hint(what: str) -> str:
    """How to ask for a replacement: ``--overwrite`` on the command line (an option
    such as ``--out``, or an argument given by position, ``what=""``), ``overwrite=True``
    in Python (``what`` such as ``"checkpoint"`` or ``"model file"``)."""
    return "--overwrite" if not what or what.startswith("-") else "overwrite=True"


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a dangling symbolic link counts as
    existing: nothing can be created through it)."""
    while not (path.exists() or path.is_symlink()) and path != path.parent:
        path = path.parent
    return path


def check_writable(target: Path, *, what: str, text: str) -> Path:
    """Refuse ``target`` unless a file can be created in its nearest existing directory.

    Parameters
    ----------
    target : pathlib.Path
        Where the file or directory will be written; its parent directories may not
        exist yet (the writer creates them).
    what, text : str
        How the user gave the path, and the path as given, for the message.

    Returns
    -------
    pathlib.Path
        The nearest existing ancestor of ``target``, a writable directory.

    Raises
    ------
    NotADirectoryError
        That ancestor is a file (or a dangling link), so no directory can be made there.
    PermissionError
        A file cannot be created there (permissions, a read-only file system); the
        probe file is removed at once.
    """
    directory = nearest_existing(target.parent)
    if not directory.is_dir():
        raise NotADirectoryError(
            f"{named(what, text)}: cannot write in {directory} (not a directory); "
            "choose another path."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.check-", dir=directory)
    except OSError as error:
        raise PermissionError(
            f"{named(what, text)}: cannot write in {directory} ({error.strerror or error}); "
            "choose another path."
        ) from None
    os.close(fd)
    os.unlink(probe)
    return directory
