"""Frames (messages as bytes) and a site's server: what a site reads from the network.

A frame is parsed without trusting it: every malformed or hostile frame — a
pickle, an object array, lengths that lie, bytes beyond the arrays, another
dtype — is refused with a RequestError and nothing in it is executed (a
canary file that unpickling would create never appears). The site's server
answers over a Unix socket only its user can open, and a bad frame gets an
error reply, not a dead server.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distmix.federated import Manifest, Site, frames
from distmix.federated.messages import Message, RequestError
from distmix.federated.server import SiteServer, ask

CANARY = Path(tempfile.gettempdir()) / f"distmix-frame-canary-{os.getpid()}"


class Canary:
    def __reduce__(self):
        return (Path.touch, (CANARY,))


def frame_with(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return frames.MAGIC + struct.pack(">I", len(raw)) + raw + payload


def test_a_message_round_trips_through_its_frame():
    message = Message(
        "compute",
        {"means": np.arange(6.0).reshape(2, 3), "masked": np.arange(5, dtype=np.uint64) << 60},
        {"round": 3, "nonce": os.urandom(16), "sites": ["a", "b"], "x": 1.5, "ok": True, "e": []},
    )
    again = frames.decode(frames.encode(message))
    assert again.kind == message.kind and again.config == message.config
    for name, array in message.arrays.items():
        assert again.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(again.arrays[name], array)


@pytest.mark.parametrize(
    "frame",
    [
        pickle.dumps(Canary()),
        b"DMXF1" + pickle.dumps(Canary()),
        frame_with({"kind": "compute", "config": {}, "arrays": [["x", "|O", [1], 8]]}, b"\0" * 8),
        frame_with({"kind": "compute", "config": {}, "arrays": [["x", "<f4", [2], 8]]}, b"\0" * 8),
        frame_with({"kind": "compute", "config": {}, "arrays": [["x", "<f8", [2], 8]]}, b"\0" * 8),
        frame_with({"kind": "compute", "config": {}, "arrays": [["x", "<f8", [1], 8]]}, b"\0" * 9),
        frame_with({"kind": "compute", "config": {}, "arrays": []}, b"extra"),
        frame_with({"kind": "compute", "config": {"p": ["pickle", "gASV"]}, "arrays": []}),
        frame_with({"kind": "compute", "config": {"p": ["bytes", "not base64!"]}, "arrays": []}),
        frame_with({"kind": "compute", "config": {"p": ["int", "1"]}, "arrays": []}),
        frame_with({"kind": "compute", "config": {"p": 5}, "arrays": []}),
        frame_with({"kind": "compute", "config": {}, "arrays": [], "code": "import os"}),
        frame_with({"kind": "compute", "config": {}}),
        frames.MAGIC + struct.pack(">I", 10**9) + b"{}",
        frames.MAGIC + struct.pack(">I", 5) + b"\xff\xfe{}}",
        b"",
    ],
    ids=lambda f: f[:12].hex() if isinstance(f, bytes) else str(f),
)
def test_malformed_and_hostile_frames_are_refused_and_nothing_runs(frame):
    CANARY.unlink(missing_ok=True)
    with pytest.raises(RequestError, match="frame"):
        frames.decode(frame)
    assert not CANARY.exists()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_decode_into_anything_but_a_refusal(data):
    for frame in (data, frames.MAGIC + data, frames.MAGIC + struct.pack(">I", len(data)) + data):
        try:
            message = frames.decode(frame)
        except RequestError:
            continue
        # what decodes is plain: float64/uint64 arrays, plain config values
        assert all(a.dtype in (np.float64, np.uint64) for a in message.arrays.values())


def test_the_site_server_answers_on_a_private_socket_and_survives_bad_frames():
    manifest = Manifest(sites=("a", "b", "c"), n_features=2, max_rows_per_site=64)
    with tempfile.TemporaryDirectory(prefix="dmx") as tmp:
        path = Path(tmp) / "a.sock"
        server = SiteServer(Site(np.ones((10, 2)), "a", manifest=manifest), path)
        server.serve_in_thread()
        try:
            assert (path.stat().st_mode & 0o777) == 0o600
            reply = frames.decode(ask(path, frames.encode(Message("identify"))))
            assert reply.config == {"site": "a", "manifest": manifest.digest}
            CANARY.unlink(missing_ok=True)
            bad = frames.decode(ask(path, pickle.dumps(Canary())))
            assert bad.config["code"] == "refused" and "frame" in bad.config["error"]
            assert not CANARY.exists()
            # a request for rows, well formed, is refused by the site naming the field
            take = Message("compute", {}, {"task": "take_rows"})
            refused = frames.decode(ask(path, frames.encode(take)))
            assert refused.config["code"] == "refused" and "'task'" in refused.config["error"]
            # and the server still answers
            assert frames.decode(ask(path, frames.encode(Message("identify")))).kind == "identify"
            with pytest.raises(FileExistsError):
                SiteServer(Site(np.ones((10, 2)), "a", manifest=manifest), path)
        finally:
            server.shutdown()
            server.server_close()
        assert not path.exists()
