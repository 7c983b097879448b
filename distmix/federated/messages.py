"""Messages between the coordinator and the sites, and the fixed schema of every request.

Layer: NumPy, the task registry and Params; nothing of transports.

A :class:`Message` is what Flower's ``RecordDict`` carries for us: a kind,
named arrays (one ``ArrayRecord``) and named scalars, strings, bytes and lists
of them (one ``ConfigRecord``). Nothing in it is ever unpickled or executed:
arrays must be plain numbers of the declared dtype, config values plain
values. :func:`check_message` enforces that on both sides of a transport.

A site answers five kinds of request (:data:`REQUEST_CONFIG`): ``identify``
asks its name and manifest (so a transport can tell its nodes apart),
``hello`` and ``keys`` set a session up, ``compute`` asks for one named task
of :data:`~distmix.federated.wire.SITE_TASKS` with its arguments (and carries
the round's mask keys), ``unmask`` asks for the shares that remove a round's
masks. Each kind has exactly the
config keys listed, each of a fixed type; a compute request's arrays are
exactly its task's arguments (:data:`ARGUMENT_ARRAYS`), of fixed dtype and
shape. Anything else is refused, naming the field (:class:`RequestError`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distmix._typing import COVARIANCE_TYPES
from distmix.federated.manifest import Manifest
from distmix.federated.wire import SITE_TASKS
from distmix.params import Params, covariance_shape, covariances_from_precision_cholesky
from distmix.privacy import ClipBall
from distmix.tasks import TASKS

NONCE_BYTES = 16
SESSION_BYTES = 16
_SCALARS = (bool, int, float, str, bytes)
_ARRAY_DTYPES = (np.dtype("<f8"), np.dtype("<u8"))


class RequestError(ValueError):
    """A request that does not follow its fixed schema (the message names the field)."""


@dataclass
class Message:
    """A kind, named arrays and named plain values: what crosses the organisation boundary."""

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def check_message(message: Any, who: str = "message") -> Message:
    """A copy of ``message`` holding only plain values and float64/uint64 arrays.

    Refuses anything that would need unpickling or could run code: object
    arrays, other dtypes, non-plain config values, lists of mixed types.
    """
    if not isinstance(message, Message) or not isinstance(message.kind, str):
        raise RequestError(f"{who} is not a distmix message.")
    arrays: dict[str, np.ndarray] = {}
    for name, value in dict(message.arrays).items():
        if not isinstance(name, str):
            raise RequestError(f"{who}: array names must be strings.")
        if not isinstance(value, np.ndarray) or value.dtype not in _ARRAY_DTYPES:
            dtype = getattr(value, "dtype", type(value).__name__)
            raise RequestError(f"{who}: array {name!r} has dtype {dtype}, not float64 or uint64.")
        arrays[name] = np.array(value, copy=True, order="C")
    config: dict[str, Any] = {}
    for name, value in dict(message.config).items():
        if not isinstance(name, str):
            raise RequestError(f"{who}: config names must be strings.")
        if isinstance(value, list):
            if any(type(v) is not type(value[0]) or type(v) not in _SCALARS for v in value):
                raise RequestError(f"{who}: config {name!r} must be a list of one plain type.")
            config[name] = list(value)
        elif type(value) in _SCALARS:
            config[name] = value
        else:
            raise RequestError(
                f"{who}: config {name!r} is a {type(value).__name__}, not a plain value."
            )
    return Message(message.kind, arrays, config)


# --------------------------------------------------------------------------- #
# the fixed schema of requests                                                #
# --------------------------------------------------------------------------- #
#: config keys (and their types) of each request kind, beside a compute task's own
REQUEST_CONFIG: dict[str, dict[str, type]] = {
    "identify": {},
    "hello": {"session": bytes, "manifest": bytes},
    "keys": {"session": bytes, "roster": list, "mask_keys": list, "share_keys": list},
    "compute": {
        "session": bytes,
        "round": int,
        "attempt": int,
        "nonce": bytes,
        "sites": list,
        "mask_keys": list,
        "sealed_keys": list,
        "task": str,
        "task_version": int,
    },
    "unmask": {
        "session": bytes,
        "round": int,
        "attempt": int,
        "nonce": bytes,
        "survivors": list,
        "dropped": list,
        "sealed": list,
    },
}

#: the arrays each task argument travels as
ARGUMENT_ARRAYS: dict[str, tuple[str, ...]] = {
    "params": ("weights", "means", "precisions_cholesky"),
    "centers": ("centers",),
    "shift": ("shift",),
    "reference": ("reference",),
    "covariance_type": (),
    "seed": (),
    "ball": ("clip_centre",),
}
#: the config values each task argument travels as
ARGUMENT_CONFIG: dict[str, dict[str, type]] = {
    # site_weights: each site uses its own mixing weights instead of the request's
    "params": {"covariance_type": str, "site_weights": bool},
    "covariance_type": {"covariance_type": str},
    "seed": {"seed": int},
    "ball": {"clip_radius": float},
}


def task_schema(task: str) -> tuple[set[str], dict[str, type]]:
    """The array names and config keys (with types) of a compute request for ``task``."""
    arrays: set[str] = set()
    config = dict(REQUEST_CONFIG["compute"])
    for argument in TASKS[task].arguments:
        arrays.update(ARGUMENT_ARRAYS[argument])
        config.update(ARGUMENT_CONFIG.get(argument, {}))
    return arrays, config


def encode_arguments(
    task: str, args: tuple, *, site_weights: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A task's arguments as request arrays and config values (coordinator side);
    ``site_weights`` asks each site to use its own mixing weights with the Params."""
    arrays: dict[str, np.ndarray] = {}
    config: dict[str, Any] = {}
    for name, value in zip(TASKS[task].arguments, args, strict=True):
        if name == "params":
            arrays["weights"] = np.asarray(value.weights, dtype=np.float64)
            arrays["means"] = np.asarray(value.means, dtype=np.float64)
            arrays["precisions_cholesky"] = np.asarray(value.precisions_cholesky, dtype=np.float64)
            config["covariance_type"] = str(value.covariance_type)
            config["site_weights"] = bool(site_weights)
        elif name in ("centers", "shift", "reference"):
            arrays[name] = np.asarray(value, dtype=np.float64)
        elif name == "covariance_type":
            config["covariance_type"] = str(value)
        elif name == "seed":
            config["seed"] = int(value)
        elif name == "ball":
            arrays["clip_centre"] = np.asarray(value.centre, dtype=np.float64)
            config["clip_radius"] = float(value.radius)
        else:  # a new task argument needs its wire form here
            raise TypeError(f"no wire form for the task argument {name!r}.")
    return arrays, config


def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    value = arrays[name]
    if value.dtype != np.dtype("<f8"):
        raise RequestError(f"field {name!r}: dtype {value.dtype}, expected float64.")
    if value.shape != shape:
        raise RequestError(f"field {name!r}: shape {value.shape}, expected {shape}.")
    if not np.all(np.isfinite(value)):
        raise RequestError(f"field {name!r} holds NaN or infinity.")
    return value


def _check_config(config: dict[str, Any], expected: dict[str, type]) -> None:
    for name, kind in expected.items():
        value = config[name]
        if type(value) is not kind:
            raise RequestError(
                f"field {name!r} is a {type(value).__name__}, expected {kind.__name__}."
            )


def check_keys(kind: str, message: Message, arrays: set[str], config: dict[str, type]) -> None:
    """The message holds exactly the fields of its kind, each of its type."""
    missing = sorted(set(config) - set(message.config)) + sorted(arrays - set(message.arrays))
    extra = sorted(set(message.config) - set(config)) + sorted(set(message.arrays) - arrays)
    if missing:
        raise RequestError(f"{kind} request lacks field {missing[0]!r}.")
    if extra:
        raise RequestError(f"{kind} request has an unexpected field {extra[0]!r}.")
    _check_config(message.config, config)


def decode_arguments(message: Message, manifest: Manifest) -> tuple[str, tuple]:
    """Validate a compute request against its task's schema; the task and its arguments.

    Called by a site on every compute request, before anything runs: the task
    must be one a site runs, at the registered version; every array of the
    declared dtype, shape (from the manifest's ``n_features`` and limits) and
    finite; the covariance type one of the four; the Params valid.
    """
    task = message.config.get("task")
    if not isinstance(task, str) or task not in SITE_TASKS:
        shown = task if isinstance(task, str) and len(task) <= 40 else type(task).__name__
        raise RequestError(
            f"field 'task': {shown!r} is not a task a site runs ({', '.join(SITE_TASKS)})."
        )
    arrays_expected, config_expected = task_schema(task)
    check_keys("compute", message, arrays_expected, config_expected)
    if message.config["task_version"] != TASKS[task].version:
        raise RequestError(
            f"field 'task_version': {task!r} version {message.config['task_version']} is "
            f"not this site's version {TASKS[task].version} (upgrade the older side)."
        )
    d = manifest.n_features
    a, c = message.arrays, message.config
    cov = c.get("covariance_type")
    if "covariance_type" in c and cov not in COVARIANCE_TYPES:
        raise RequestError(f"field 'covariance_type' must be one of {COVARIANCE_TYPES}.")
    args: list[Any] = []
    for argument in TASKS[task].arguments:
        if argument == "params":
            k = int(np.shape(a["means"])[0]) if np.ndim(a["means"]) == 2 else -1
            if not 1 <= k <= manifest.max_components:
                raise RequestError(
                    f"field 'means': {k} components, expected 1 to {manifest.max_components}."
                )
            weights = _array(a, "weights", (k,))
            means = _array(a, "means", (k, d))
            chol = _array(a, "precisions_cholesky", covariance_shape(str(cov), k, d))
            try:
                params = Params(
                    cov,  # type: ignore[arg-type]
                    weights,
                    means,
                    covariances_from_precision_cholesky(chol, str(cov)),
                    chol,
                )
            except (ValueError, np.linalg.LinAlgError) as error:
                raise RequestError(f"field 'weights'/'precisions_cholesky': {error}") from None
            args.append(params)
        elif argument == "centers":
            m = int(np.shape(a["centers"])[0]) if np.ndim(a["centers"]) == 2 else -1
            if not 1 <= m <= manifest.max_centres:
                raise RequestError(
                    f"field 'centers': {m} centres, expected 1 to {manifest.max_centres}."
                )
            args.append(_array(a, "centers", (m, d)))
        elif argument == "shift":
            args.append(_array(a, "shift", (d,)))
        elif argument == "reference":
            k = int(np.shape(a["reference"])[0]) if np.ndim(a["reference"]) == 2 else -1
            if not 1 <= k <= manifest.max_components:
                raise RequestError(
                    f"field 'reference': {k} components, expected 1 to {manifest.max_components}."
                )
            args.append(_array(a, "reference", (k, d)))
        elif argument == "covariance_type":
            args.append(cov)
        elif argument == "seed":
            if not 0 <= c["seed"] < 2**63:
                raise RequestError("field 'seed' must be in [0, 2**63).")
            args.append(c["seed"])
        elif argument == "ball":
            centre = _array(a, "clip_centre", (d,))
            radius = c["clip_radius"]
            if not (math.isfinite(radius) and radius > 0.0):
                raise RequestError("field 'clip_radius' must be finite and > 0.")
            args.append(ClipBall(centre, radius))
    return task, tuple(args)


def request_digest(message: Message) -> bytes:
    """What a request asks, without its round, attempt, nonce and sites: the ledger's key."""
    h = hashlib.sha256()
    c = message.config
    h.update(f"{c['task']}/{c['task_version']}".encode())
    # a site with its own weights ignores the request's: they must not make it new
    ignored = {"weights"} if c.get("site_weights") else set()
    for name in sorted(set(message.arrays) - ignored):
        value = message.arrays[name]
        h.update(f"|{name}:{value.dtype.str}:{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    for name in sorted(set(c) - set(REQUEST_CONFIG["compute"]) - ignored):
        h.update(f"|{name}={c[name]!r}".encode())
    return h.digest()


def new_nonce() -> bytes:
    """A fresh request nonce (a site accepts each only once)."""
    return os.urandom(NONCE_BYTES)


def new_session() -> bytes:
    """A fresh session id (new keys at every site)."""
    return os.urandom(SESSION_BYTES)
