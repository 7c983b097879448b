"""Messages as bytes: the frame a site's server reads, parsed without trusting it.

Layer: the standard library, NumPy and :mod:`~distmix.federated.messages`.

A frame is ``b"DMXF1"``, the length of a JSON header (4 bytes, big-endian),
the header, then the arrays' raw little-endian bytes back to back. The header
holds the message kind, the config (each value tagged with its type; bytes in
base64) and, per array, its name, dtype (float64 or uint64 only), shape and
byte length. :func:`decode` checks every part of it — lengths, types, dtypes,
that the arrays exactly fill the payload — and builds plain NumPy arrays from
the bytes: nothing is unpickled, evaluated or imported, whatever the frame
holds.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import numpy as np

from distmix.federated.messages import Message, RequestError, check_message

MAGIC = b"DMXF1"
MAX_HEADER_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 30
_DTYPES = {"<f8": np.dtype("<f8"), "<u8": np.dtype("<u8")}
_TAGS = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes"}


def _tagged(value: Any) -> list:
    if isinstance(value, list):
        return ["list", [_tagged(v) for v in value]]
    tag = _TAGS[type(value)]
    if tag == "bytes":
        return [tag, base64.b64encode(value).decode("ascii")]
    if tag == "float" and not math.isfinite(value):
        return [tag, repr(value)]
    return [tag, value]


def encode(message: Message) -> bytes:
    """The frame of a (checked) message."""
    message = check_message(message)
    arrays, payload = [], []
    for name, array in message.arrays.items():
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        arrays.append([name, array.dtype.newbyteorder("<").str, list(array.shape), len(data)])
        payload.append(data)
    header = json.dumps(
        {
            "kind": message.kind,
            "config": {name: _tagged(value) for name, value in message.config.items()},
            "arrays": arrays,
        },
        separators=(",", ":"),
    ).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + b"".join(payload)


def _untagged(item: Any, where: str, depth: int = 0) -> Any:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        raise RequestError(f"frame: config {where!r} is not a tagged value.")
    tag, value = item
    if tag == "list" and depth == 0 and isinstance(value, list):
        return [_untagged(v, where, 1) for v in value]
    if tag == "bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise RequestError(f"frame: config {where!r} is not valid base64.") from None
    if tag == "float" and isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if tag == "float" and type(value) in (int, float):
        return float(value)
    kinds: dict[str, type] = {"bool": bool, "int": int, "str": str}
    if tag not in kinds or type(value) is not kinds[tag]:
        raise RequestError(f"frame: config {where!r} is not a {tag}.")
    return value


def decode(frame: bytes) -> Message:
    """The message a frame holds; :class:`RequestError` for anything malformed."""
    if not isinstance(frame, (bytes, bytearray)) or len(frame) > MAX_FRAME_BYTES:
        raise RequestError("frame: not a byte string of at most 1 GiB.")
    frame = bytes(frame)
    if len(frame) < len(MAGIC) + 4 or not frame.startswith(MAGIC):
        raise RequestError("frame: not a distmix frame (bad magic).")
    (size,) = struct.unpack(">I", frame[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if size > MAX_HEADER_BYTES or start + size > len(frame):
        raise RequestError("frame: header length out of range.")
    try:
        header = json.loads(frame[start : start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError("frame: the header is not JSON.") from None
    if not isinstance(header, dict) or set(header) != {"kind", "config", "arrays"}:
        raise RequestError("frame: the header must hold exactly kind, config and arrays.")
    kind, config, arrays = header["kind"], header["config"], header["arrays"]
    if not isinstance(kind, str) or not isinstance(config, dict) or not isinstance(arrays, list):
        raise RequestError("frame: malformed header.")
    values = {str(name): _untagged(item, str(name)) for name, item in config.items()}
    offset = start + size
    out: dict[str, np.ndarray] = {}
    for entry in arrays:
        if not (
            isinstance(entry, list)
            and len(entry) == 4
            and isinstance(entry[0], str)
            and entry[1] in _DTYPES
            and isinstance(entry[2], list)
            and all(type(n) is int and 0 <= n < 2**40 for n in entry[2])
            and type(entry[3]) is int
        ):
            raise RequestError("frame: malformed array entry (name, float64/uint64, shape, bytes).")
        name, dtype, shape, nbytes = entry[0], _DTYPES[entry[1]], tuple(entry[2]), entry[3]
        if name in out or nbytes != math.prod(shape) * 8 or offset + nbytes > len(frame):
            raise RequestError(f"frame: array {name!r} does not match its bytes.")
        out[name] = np.frombuffer(
            frame, dtype=dtype, count=math.prod(shape), offset=offset
        ).reshape(shape)
        offset += nbytes
    if offset != len(frame):
        raise RequestError("frame: bytes beyond the declared arrays.")
    return check_message(Message(kind, out, values), "frame")
