"""A site's server: its :class:`~distmix.federated.site.Site` behind a local socket.

Layer: the site and the frames; the standard library's ``socketserver``.

Flower starts a fresh process for every message a SuperNode receives; a site's
rows, keys and ledger must outlive them. So the site runs one long-lived
process (``distmix site``) holding its :class:`Site`, listening on a Unix socket
that only the site's own user can reach, and the ClientApp that Flower runs
for each message only forwards the message's frame to it and the reply back
(see ``distmix/federated/flower_app``). Requests are answered one at a time,
in the order they arrive.

Wire: an 8-byte big-endian length, then that many bytes of frame
(:mod:`~distmix.federated.frames`), each way, one request per connection.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from distmix.federated import frames
from distmix.federated.messages import Message, RequestError
from distmix.federated.site import Site

logger = logging.getLogger("distmix.federated.server")
_LENGTH = struct.Struct(">Q")


def read_frame(connection: socket.socket, limit: int = frames.MAX_FRAME_BYTES) -> bytes:
    """One length-prefixed frame from ``connection``."""
    head = _read_exactly(connection, _LENGTH.size)
    (size,) = _LENGTH.unpack(head)
    if size > limit:
        raise RequestError(f"frame of {size} bytes exceeds the limit of {limit}.")
    return _read_exactly(connection, size)


def write_frame(connection: socket.socket, frame: bytes) -> None:
    connection.sendall(_LENGTH.pack(len(frame)) + frame)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = connection.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-frame.")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        site: Site = self.server.site  # type: ignore[attr-defined]
        try:
            frame = read_frame(self.request)
        except (ConnectionError, RequestError, OSError) as error:
            logger.warning("site %r: unreadable request: %s", site.name, error)
            return
        try:
            request = frames.decode(frame)
        except RequestError as error:
            reply = Message("unknown", config={"error": str(error), "code": "refused"})
        else:
            reply = site.handle(request)
        write_frame(self.request, frames.encode(reply))


class SiteServer(socketserver.UnixStreamServer):
    """Serve ``site`` on the Unix socket ``path`` (made readable by this user only)."""

    def __init__(self, site: Site, path: str | os.PathLike[str]) -> None:
        self.site = site
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(
                f"{self.path} exists: another site server may be running (remove it if not)."
            )
        old = os.umask(0o177)  # the socket: read and write for this user only
        try:
            super().__init__(str(self.path), _Handler)
        finally:
            os.umask(old)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="distmix-site", daemon=True)
        thread.start()
        return thread

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


def ask(path: str | os.PathLike[str], frame: bytes, timeout: float = 600.0) -> bytes:
    """Send one frame to the site server at ``path``; its reply frame."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(path))
        write_frame(connection, frame)
        return read_frame(connection)


class SocketTransport:
    """Reach site servers on this machine by their Unix sockets (no Flower).

    For sites that share a host with the coordinator (trials, tests): each
    exchange asks every site's server at once; a site that does not answer in
    ``timeout`` seconds, or whose socket is gone, is absent from the replies.
    """

    def __init__(self, sockets: dict[str, str | os.PathLike[str]], timeout: float = 600.0) -> None:
        self.sockets = {str(name): Path(path) for name, path in sockets.items()}
        self.timeout = float(timeout)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(self.sockets)

    def exchange(self, requests: Mapping[str, Message]) -> dict[str, Message]:
        def one(name: str) -> Message | None:
            try:
                reply = ask(self.sockets[name], frames.encode(requests[name]), self.timeout)
                return frames.decode(reply)
            except (OSError, ConnectionError, RequestError) as error:
                logger.warning("site %r did not answer: %s", name, error)
                return None

        with ThreadPoolExecutor(max(1, len(requests))) as pool:
            answers = dict(zip(requests, pool.map(one, list(requests)), strict=True))
        return {name: reply for name, reply in answers.items() if reply is not None}
