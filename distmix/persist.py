"""Model files and checkpoints: NumPy ``.npz`` archives with a JSON header, no pickle.

A file holds float64 arrays and one JSON document (``meta``) naming its
``format`` (``"distmix-model"`` or ``"distmix-checkpoint"``) and ``version``.
Reading never unpickles (``allow_pickle=False``), and every file is validated
on load: format and version, array shapes against the covariance type,
finite values, weights summing to one, positive-definite covariances.

Writes are atomic: the archive is written to a temporary file in the target's
directory, flushed to disk, then renamed over the target, so a reader (or a
resumed fit after a crash) sees either the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distmix._paths import check_writable, is_url, named, overwrite_hint
from distmix.params import Params, covariance_shape
from distmix.stepwise import Stream, StreamPosition, StreamRecord, StreamState
from distmix.suffstats import SuffStats

MODEL_FORMAT = "distmix-model"
CHECKPOINT_FORMAT = "distmix-checkpoint"
FORMAT_VERSION = 1

_PARAM_FIELDS = ("weights", "means", "covariances", "precisions_cholesky")


#: the numbers every private model's report holds (what ``distmix info`` shows)
PRIVACY_REPORT_NUMBERS = ("rho", "epsilon", "delta", "clip_radius", "iterations")


class ModelFileError(ValueError):
    """A model or checkpoint file is missing, unreadable, of another version or inconsistent."""


# -- atomic archive I/O --------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    A failure names ``path``, never the temporary file, and leaves ``path`` as it was.
    """
    target = Path(path)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = error.strerror or type(error).__name__
        raise type(error)(f"{path}: could not be written ({reason})") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def write_archive(
    path: str | os.PathLike[str], meta: Mapping[str, Any], arrays: Mapping[str, Any]
) -> None:
    """An ``.npz`` of float64 ``arrays`` plus ``meta`` as JSON, written atomically."""
    buffer = io.BytesIO()
    payload: dict[str, Any] = {
        name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()
    }
    payload["meta"] = np.asarray(json.dumps(dict(meta), sort_keys=True))  # a unicode array
    np.savez(buffer, **payload)  # float and unicode arrays only: nothing is pickled
    atomic_write_bytes(path, buffer.getvalue())


_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _read_npz_arrays(source: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``source``, never unpickling anything.

    Anything else is refused with our own message: NumPy's own, for a pickled
    object array or for bytes it takes for a pickle, suggests loading the file
    "unsafely with allow_pickle=True", which is the one thing not to do with a
    file of unknown origin.
    """
    not_ours = "distmix model files and checkpoints are .npz archives that distmix wrote"
    with open(source, "rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    if not head.startswith(_ZIP_MAGIC):  # np.load would try a non-zip, non-.npy file as a pickle
        what = (
            "an empty file"
            if not head
            else "a single NumPy .npy array"
            if head.startswith(_NPY_MAGIC)
            else "not an .npz archive"
        )
        raise ModelFileError(f"{source}: {what}, not a distmix file; {not_ours}.")
    contents: dict[str, np.ndarray] = {}
    try:
        with np.load(source, allow_pickle=False) as archive:
            for name in archive.files:
                try:
                    value = archive[name]
                except ValueError as error:
                    if "pickle" not in str(error):
                        raise
                    raise ModelFileError(
                        f"{source}: array {name!r} holds Python objects, which distmix never "
                        f"unpickles; not a distmix file ({not_ours})."
                    ) from None
                if not isinstance(value, np.ndarray):  # a zip member that is no .npy
                    raise ModelFileError(
                        f"{source}: holds {name!r}, which is not a NumPy array; not a distmix "
                        f"file ({not_ours})."
                    )
                contents[name] = value
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{source}: not a readable distmix file ({error}).") from error
    return contents


def read_archive(
    path: str | os.PathLike[str], expected_format: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of an archive, after checking its format and version."""
    source = Path(path)
    if not source.is_file():
        raise ModelFileError(f"{source}: no such file.")
    contents = _read_npz_arrays(source)
    if "meta" not in contents:
        raise ModelFileError(f"{source}: no 'meta' header; not a distmix file.")
    try:
        meta = json.loads(str(contents.pop("meta")))
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{source}: its 'meta' header is not valid JSON ({error}).") from error
    if meta.get("format") != expected_format:
        raise ModelFileError(
            f"{source}: format {meta.get('format')!r}, expected {expected_format!r}."
        )
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{source}: format version {version!r}; this distmix reads version "
            f"{FORMAT_VERSION}. Re-save it with the distmix that wrote it, or upgrade."
        )
    return meta, contents


def file_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` a distmix file declares, or ``None`` for anything else (never unpickles,
    and reads only the header of a file that is not a zip archive)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
                return None
        with np.load(path, allow_pickle=False) as archive:
            if "meta" not in getattr(archive, "files", ()):
                return None
            meta = json.loads(str(archive["meta"]))
    except Exception:  # not ours, whatever it is
        return None
    form = meta.get("format") if isinstance(meta, dict) else None
    return form if isinstance(form, str) else None


_FORMAT_NAMES = {
    MODEL_FORMAT: "a distmix model file",
    CHECKPOINT_FORMAT: "a distmix checkpoint",
    "distmix-stream-checkpoint": "a distmix stream checkpoint",
}


def check_file_target(
    path: str | os.PathLike[str],
    *,
    what: str,
    kinds: tuple[str, ...],
    replace: bool,
) -> Path:
    """Refuse, before any work, a file that distmix cannot or must not write at ``path``.

    Parameters
    ----------
    path : the user's path (named in every error)
    what : how the user gave it (``"--out"``, ``"checkpoint"``), for the messages
    kinds : the formats an existing file there may have to be replaced
    replace : whether an existing file of those formats may be replaced

    Raises
    ------
    ValueError
        ``path`` is a URL (model files and checkpoints are local files).
    FileExistsError
        Something is there that must not be replaced: a directory, a file that is
        not of ``kinds`` (a model file is never taken for a checkpoint, nor the
        reverse), or any file when ``replace`` is false.
    NotADirectoryError, PermissionError
        The nearest existing ancestor of ``path`` is a file, or no file can be
        created in it (found by trying: permission bits do not stop root).
        Parent directories that do not exist yet are fine: the write creates them.
        These checks are those of every path distmix writes (:mod:`distmix._paths`).
    """
    text = os.fspath(path)
    if is_url(text):
        raise ValueError(
            f"{named(what, text)}: model files and checkpoints are local paths; write to a "
            "local path and copy the file (for example with fsspec or the cloud's CLI)."
        )
    target = Path(text)
    if target.is_dir():
        raise FileExistsError(f"{named(what, text)} is a directory; give a file path.")
    if target.exists():
        found = file_format(target)
        if found not in kinds:
            name = _FORMAT_NAMES.get(found or "", "not a file distmix wrote")
            wanted = " or ".join(_FORMAT_NAMES[kind] for kind in kinds)
            raise FileExistsError(
                f"{named(what, text)} exists and is {name}, not {wanted}: writing there "
                "would destroy it. Choose another path."
            )
        if not replace:
            raise FileExistsError(
                f"{named(what, text)} already exists; pass {overwrite_hint(what)} to replace "
                "it, or choose another path."
            )
    check_writable(target, what=what, text=text)
    return target


# -- Params inside archives -----------------------------------------------------
def params_arrays(params: Params, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + name: getattr(params, name) for name in _PARAM_FIELDS}


def params_from_arrays(
    arrays: Mapping[str, np.ndarray], covariance_type: str, source: Any, prefix: str = ""
) -> Params:
    """Rebuild and validate Params; any inconsistency names the file and the array."""
    try:
        values = {
            name: np.asarray(arrays[prefix + name], dtype=np.float64) for name in _PARAM_FIELDS
        }
    except KeyError as error:
        raise ModelFileError(f"{source}: array {error.args[0]!r} is missing.") from None
    means = values["means"]
    if means.ndim != 2:
        raise ModelFileError(
            f"{source}: means must be 2-D (n_components, n_features), got {means.shape}."
        )
    k, d = means.shape
    expected = {
        "weights": (k,),
        "covariances": covariance_shape(covariance_type, k, d),
        "precisions_cholesky": covariance_shape(covariance_type, k, d),
    }
    for name, shape in expected.items():
        if values[name].shape != shape:
            raise ModelFileError(
                f"{source}: {prefix}{name} has shape {values[name].shape}, expected {shape} for "
                f"{k} components × {d} features, covariance_type={covariance_type!r}."
            )
    for name, value in values.items():
        if not np.all(np.isfinite(value)):
            raise ModelFileError(f"{source}: {prefix}{name} contains NaN or infinity.")
    if covariance_type in ("full", "tied"):
        _check_symmetric(values["covariances"], covariance_type, source, prefix)
    try:
        rebuilt = Params.from_covariances(
            values["weights"], means, values["covariances"], covariance_type
        )
    except ValueError as error:
        raise ModelFileError(f"{source}: {error}") from error
    if not np.allclose(
        rebuilt.precisions_cholesky, values["precisions_cholesky"], rtol=1e-8, atol=0
    ):
        raise ModelFileError(
            f"{source}: {prefix}precisions_cholesky does not match the stored covariances."
        )
    # keep the stored bits (exact round trip); they were just checked against the covariances
    return Params(
        covariance_type,  # type: ignore[arg-type]
        values["weights"],
        means,
        values["covariances"],
        values["precisions_cholesky"],
    )


def _check_symmetric(
    covariances: np.ndarray, covariance_type: str, source: Any, prefix: str
) -> None:
    """Refuse a full (K, D, D) or tied (D, D) covariance that is not symmetric.

    The Cholesky factorisation reads one triangle only, so an asymmetric matrix
    would otherwise load, and its other triangle would go unused. Tolerance:
    1e-10 of the matrix's largest entry, far above the rounding of an M-step.
    """
    stack = covariances.reshape(-1, *covariances.shape[-2:])
    for k, cov in enumerate(stack):
        gap = np.abs(cov - cov.T)
        if gap.max() > 1e-10 * np.abs(cov).max():
            i, j = (int(index) for index in np.unravel_index(np.argmax(gap), gap.shape))
            which = f"component {k}" if covariance_type == "full" else "the tied covariance"
            raise ModelFileError(
                f"{source}: {prefix}covariances is not symmetric for {which}: entry [{i}, {j}] "
                f"is {cov[i, j]!r} but [{j}, {i}] is {cov[j, i]!r}. A covariance matrix equals "
                "its transpose; the file is damaged or was not written by distmix."
            )


# -- checkpoints -----------------------------------------------------------------
@dataclass(frozen=True)
class RunState:
    """One EM run: Params after ``len(lower_bounds)`` iterations, and its history."""

    params: Params
    lower_bounds: tuple[float, ...]
    converged: bool = False

    @property
    def n_iter(self) -> int:
        return len(self.lower_bounds)


@dataclass(frozen=True)
class Checkpoint:
    """Where a fit stands after an iteration.

    ``fingerprint`` identifies the fit (estimator settings and data shape) so that a
    checkpoint is never resumed by a different fit; ``init_index`` is the current
    run among ``n_init``; ``current`` is its state; ``best`` the best finished run.
    """

    fingerprint: dict[str, Any]
    init_index: int
    current: RunState | None
    best: RunState | None = None
    best_lower_bound: float = -np.inf
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def check_checkpoint_settings(
    path: Any, stored: dict[str, Any], current: dict[str, Any], what: str, hint: str
) -> None:
    """Refuse a checkpoint written by another fit or stream, naming every difference.

    ``stored`` is the settings record the checkpoint holds, ``current`` this
    run's; ``what`` names the kind of run ("fit", "stream") and ``hint`` the remedy.
    """
    differences = [
        f"{key} {stored.get(key)!r} in the checkpoint, {value!r} now"
        for key, value in current.items()
        if stored.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a different {what} ("
            + "; ".join(differences)
            + "). "
            + hint
        )


def _history_key(prefix: str) -> str:
    return prefix + "lower_bounds"


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically to ``path``."""
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "fingerprint": checkpoint.fingerprint,
        "init_index": checkpoint.init_index,
        "finished": checkpoint.finished,
        "best_lower_bound": None
        if not np.isfinite(checkpoint.best_lower_bound)
        else checkpoint.best_lower_bound,
        "extra": checkpoint.extra,
    }
    arrays: dict[str, Any] = {}
    for prefix, run in (("current_", checkpoint.current), ("best_", checkpoint.best)):
        meta[prefix + "present"] = run is not None
        if run is not None:
            meta[prefix + "converged"] = run.converged
            arrays.update(params_arrays(run.params, prefix))
            arrays[_history_key(prefix)] = np.asarray(run.lower_bounds, dtype=np.float64)
    write_archive(path, meta, arrays)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`."""
    meta, arrays = read_archive(path, CHECKPOINT_FORMAT)
    covariance_type = meta.get("fingerprint", {}).get("covariance_type")
    if not isinstance(covariance_type, str):
        raise ModelFileError(f"{path}: the checkpoint's fingerprint names no covariance_type.")
    runs: dict[str, RunState | None] = {}
    for prefix in ("current_", "best_"):
        if not meta.get(prefix + "present"):
            runs[prefix] = None
            continue
        params = params_from_arrays(arrays, covariance_type, path, prefix)
        history = arrays.get(_history_key(prefix))
        if history is None or history.ndim != 1:
            raise ModelFileError(f"{path}: {_history_key(prefix)} is missing or not 1-D.")
        runs[prefix] = RunState(
            params, tuple(float(v) for v in history), bool(meta.get(prefix + "converged"))
        )
    best_lb = meta.get("best_lower_bound")
    return Checkpoint(
        fingerprint=meta["fingerprint"],
        init_index=int(meta.get("init_index", 0)),
        current=runs["current_"],
        best=runs["best_"],
        best_lower_bound=-np.inf if best_lb is None else float(best_lb),
        finished=bool(meta.get("finished", False)),
        extra=dict(meta.get("extra", {})),
    )


# -- streams ----------------------------------------------------------------------
STREAM_CHECKPOINT_FORMAT = "distmix-stream-checkpoint"
_RECORD_FIELDS = (
    "n_steps",
    "n_samples_seen",
    "step_size",
    "batch_log_likelihood",
    "running_log_likelihood",
    "validation_log_likelihood",
)
_POSITION_FIELDS = ("rows_done", "segment_start", "segment_stop", "pass_index", "batch_index")


def stream_arrays(
    state: StreamState, position: StreamPosition | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` holding a :class:`~distmix.stepwise.StreamState` exactly."""
    meta: dict[str, Any] = {
        "n_steps": state.n_steps,
        "n_samples_seen": state.n_samples_seen,
        "weight_seen": state.weight_seen,
        "n_averaged": state.n_averaged,
        "has_stats": state.stats is not None,
        "has_averaged": state.averaged is not None,
        "position": None
        if position is None
        else {name: int(getattr(position, name)) for name in _POSITION_FIELDS},
    }
    arrays: dict[str, Any] = dict(params_arrays(state.params, "stream_params_"))
    if state.averaged is not None:
        arrays.update(params_arrays(state.averaged, "stream_averaged_"))
    if state.stats is not None:
        arrays["stream_stats"] = state.stats.pack()
        arrays["stream_stats_reference"] = state.stats.reference
    history = np.array(
        [
            [
                np.nan if getattr(r, name) is None else float(getattr(r, name))
                for name in _RECORD_FIELDS
            ]
            for r in state.history
        ],
        dtype=np.float64,
    ).reshape(len(state.history), len(_RECORD_FIELDS))
    arrays["stream_history"] = history
    return meta, arrays


def stream_from_arrays(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], covariance_type: str, source: Any
) -> tuple[StreamState, StreamPosition | None]:
    """Inverse of :func:`stream_arrays`: ``(StreamState, StreamPosition or None)``, validated."""
    try:
        params = params_from_arrays(arrays, covariance_type, source, "stream_params_")
        averaged = (
            params_from_arrays(arrays, covariance_type, source, "stream_averaged_")
            if meta["has_averaged"]
            else None
        )
        stats = None
        if meta["has_stats"]:
            reference = np.asarray(arrays["stream_stats_reference"], dtype=np.float64)
            if reference.shape != params.means.shape:
                raise ModelFileError(
                    f"{source}: stream_stats_reference has shape {reference.shape}, "
                    f"expected {params.means.shape}."
                )
            stats = SuffStats.unpack(arrays["stream_stats"], covariance_type, reference)
            if not all(
                np.all(np.isfinite(getattr(stats, name)))
                for name in ("resp_sum", "x_sum", "second")
            ):
                raise ModelFileError(f"{source}: stream_stats contains NaN or infinity.")
        history = np.asarray(arrays["stream_history"], dtype=np.float64)
        if history.ndim != 2 or history.shape[1] != len(_RECORD_FIELDS):
            raise ModelFileError(
                f"{source}: stream_history has shape {history.shape}, expected "
                f"(n, {len(_RECORD_FIELDS)})."
            )
        records = tuple(
            StreamRecord(
                int(row[0]),
                int(row[1]),
                float(row[2]),
                float(row[3]),
                float(row[4]),
                None if np.isnan(row[5]) else float(row[5]),
            )
            for row in history
        )
        state = StreamState(
            params=params,
            stats=stats,
            n_steps=int(meta["n_steps"]),
            n_samples_seen=int(meta["n_samples_seen"]),
            weight_seen=float(meta["weight_seen"]),
            averaged=averaged,
            n_averaged=int(meta["n_averaged"]),
            history=records,
        )
        raw = meta.get("position")
        position = (
            None if raw is None else StreamPosition(**{k: int(raw[k]) for k in _POSITION_FIELDS})
        )
    except KeyError as error:
        raise ModelFileError(f"{source}: the stream state lacks {error.args[0]!r}.") from None
    except (TypeError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{source}: invalid stream state ({error}).") from error
    if state.n_steps < 0 or state.n_samples_seen < 0 or min(_position_values(position)) < 0:
        raise ModelFileError(f"{source}: negative counters in the stream state.")
    return state, position


def _position_values(position: Any) -> list[int]:
    if position is None:
        return [0]
    return [int(getattr(position, name)) for name in _POSITION_FIELDS]


def save_stream_checkpoint(
    path: str | os.PathLike[str],
    fingerprint: Mapping[str, Any],
    state: StreamState,
    position: StreamPosition | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a stream's state and position atomically to ``path``."""
    stream_meta, arrays = stream_arrays(state, position)
    meta = {
        "format": STREAM_CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "fingerprint": dict(fingerprint),
        "stream": stream_meta,
        "extra": dict(extra or {}),
    }
    write_archive(path, meta, arrays)


def load_stream_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], StreamState, StreamPosition | None, dict[str, Any]]:
    """``(fingerprint, state, position, extra)`` of a stream checkpoint, validated."""
    meta, arrays = read_archive(path, STREAM_CHECKPOINT_FORMAT)
    fingerprint = meta.get("fingerprint")
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("covariance_type"), str):
        raise ModelFileError(f"{path}: the checkpoint's fingerprint names no covariance_type.")
    stream = meta.get("stream")
    if not isinstance(stream, dict):
        raise ModelFileError(f"{path}: the checkpoint holds no stream state.")
    state, position = stream_from_arrays(stream, arrays, fingerprint["covariance_type"], path)
    return fingerprint, state, position, dict(meta.get("extra", {}))


# -- model files ------------------------------------------------------------------
#: settings of how a fit is run, not of the model: model files neither keep nor restore them
RUN_TIME_SETTINGS = ("checkpoint", "resume", "warm_start", "verbose", "verbose_interval", "kernel")
#: estimator settings that are arrays, stored as ``init_<name>`` arrays
ARRAY_SETTINGS = ("weights_init", "means_init", "precisions_init")
#: what a streamed model records of how it read its source
STREAM_PLAN_KEYS = ("seed", "window", "n_passes", "shuffle")


@dataclass(frozen=True)
class ModelFile:
    """What a model file holds: a fitted mixture, the settings that define it, and,
    for a streamed model, its stream (state, position, plan, and the rows it read)."""

    params: Params
    settings: dict[str, Any]
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: tuple[float, ...]
    stream: Stream | None = None
    #: a private model's ``privacy_`` report (JSON values): what its fit spent
    privacy_report: dict[str, Any] | None = None


def _setting_value(value: Any) -> Any:
    """A setting as JSON, or ``NotImplemented`` for what cannot be re-created (a
    ``RandomState`` instance)."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [int(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return NotImplemented


def write_model(path: str | os.PathLike[str], model: ModelFile, *, overwrite: bool = False) -> None:
    """Write ``model`` to ``path`` atomically (an ``.npz`` archive with a JSON header).

    Run-time settings (:data:`RUN_TIME_SETTINGS`) are not stored. An existing
    file at ``path`` is refused unless ``overwrite`` (and then only a distmix
    model file is replaced).
    """
    check_file_target(path, what="model file", kinds=(MODEL_FORMAT,), replace=overwrite)
    params = model.params
    settings: dict[str, Any] = {}
    arrays: dict[str, Any] = {**params_arrays(params), "lower_bounds": list(model.lower_bounds)}
    for name, value in model.settings.items():
        if name in RUN_TIME_SETTINGS:
            continue  # how that fit ran, not what the model is
        if name in ARRAY_SETTINGS:
            if value is not None:
                arrays["init_" + name] = value
            continue
        if name == "privacy" and value is not None:  # distmix.Privacy: its public record
            settings[name] = value.record()
            continue
        stored = _setting_value(value)
        if stored is not NotImplemented:
            settings[name] = stored
    meta: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "covariance_type": params.covariance_type,
        "estimator_params": settings,
        "converged": bool(model.converged),
        "n_iter": int(model.n_iter),
        "lower_bound": float(model.lower_bound),
        "n_features_in": int(params.n_features),
    }
    if model.privacy_report is not None:
        meta["privacy_report"] = model.privacy_report
    if model.stream is not None:
        # a streamed model carries its stream: loaded with warm_start=True, it continues it
        stream_meta, stream_arrays_ = stream_arrays(model.stream.state, model.stream.position)
        stream_meta["plan"] = model.stream.plan
        stream_meta["data"] = model.stream.data
        meta["stream"] = stream_meta
        arrays.update(stream_arrays_)
    write_archive(path, meta, arrays)


def read_model(path: str | os.PathLike[str]) -> ModelFile:
    """Read and validate a model file written by :func:`write_model`.

    Format and version, shapes, finite values, weights summing to one,
    positive-definite covariances and the stream state's agreement with the
    parameters are checked; anything else is refused with a
    :class:`ModelFileError` naming the file and the array. Run-time settings
    that older files stored are dropped.
    """
    meta, arrays = read_archive(path, MODEL_FORMAT)
    covariance_type = meta.get("covariance_type")
    if covariance_type not in ("full", "tied", "diag", "spherical"):
        raise ModelFileError(f"{path}: unknown covariance_type {covariance_type!r}.")
    params = params_from_arrays(arrays, covariance_type, path)
    if meta.get("n_features_in") != params.n_features:
        raise ModelFileError(
            f"{path}: n_features_in {meta.get('n_features_in')!r} does not match the means' "
            f"{params.n_features} features."
        )
    settings = dict(meta.get("estimator_params", {}))
    for name in RUN_TIME_SETTINGS:
        settings.pop(name, None)  # older files stored them: never obeyed
    if isinstance(settings.get("block_size"), list):
        settings["block_size"] = tuple(settings["block_size"])
    for name in ARRAY_SETTINGS:
        settings[name] = arrays.get("init_" + name)
    if settings.get("covariance_type") not in (None, covariance_type):
        raise ModelFileError(f"{path}: covariance_type disagrees between header and settings.")
    settings["covariance_type"] = covariance_type
    history = np.asarray(arrays.get("lower_bounds", np.empty(0)), dtype=np.float64)
    stream = meta.get("stream")
    report = meta.get("privacy_report")
    if report is not None and not (
        isinstance(report, dict)
        and all(
            isinstance(report.get(key), (int, float)) and not isinstance(report.get(key), bool)
            for key in PRIVACY_REPORT_NUMBERS
        )
    ):
        raise ModelFileError(
            f"{path}: privacy_report is not a record with the numbers "
            f"{', '.join(PRIVACY_REPORT_NUMBERS)}."
        )
    expected = 0 if report is not None else meta.get("n_iter")  # a private fit: no bounds
    if isinstance(stream, dict):  # a streamed model keeps the history of its newest updates
        expected = np.asarray(arrays.get("stream_history", np.empty((0, 0)))).shape[0]
    if history.ndim != 1 or history.size != expected:
        raise ModelFileError(f"{path}: lower_bounds does not hold n_iter={expected} values.")
    kept = None
    if isinstance(stream, dict):
        state, position = stream_from_arrays(stream, arrays, covariance_type, path)
        if not state.model_params.allclose(params, rtol=0.0):
            raise ModelFileError(f"{path}: the stream state disagrees with the model's parameters.")
        plan = data = None
        if isinstance(stream.get("plan"), dict):
            plan = {k: stream["plan"].get(k) for k in STREAM_PLAN_KEYS}
        if isinstance(stream.get("data"), dict):  # the rows it read: fingerprint, blocks
            data = dict(stream["data"])
        kept = Stream(state, position, plan, data)
    return ModelFile(
        params=params,
        settings=settings,
        converged=bool(meta.get("converged")),
        n_iter=int(meta["n_iter"]),
        lower_bound=float(meta["lower_bound"]),
        lower_bounds=tuple(history.tolist()),
        stream=kept,
        privacy_report=report,
    )
