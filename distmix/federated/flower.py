"""The Flower transport: distmix messages between organisations, over Flower's Message API.

Layer: the transport protocol, frames and Flower (``flwr``, an optional
dependency: only the coordinator's ServerApp and ``distmix federate`` import
this module).

Each distmix request travels as one Flower ``Message`` of type
``query.distmix`` whose ``RecordDict`` holds a ``ConfigRecord`` with the
request's frame (:mod:`~distmix.federated.frames`); the reply comes back the
same way. A SuperNode's ClientApp hands the frame to the site's own server
(``distmix site``), which parses and validates it: the coordinator's code never
runs at the site beyond that forwarding shim. Sites are found by asking every
connected node who it is (an ``identify`` request); a node that errs or does
not answer within the timeout is absent from the replies, which the secure
sum treats as a dropout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from distmix.federated import frames
from distmix.federated.messages import Message as DistmixMessage
from distmix.federated.messages import RequestError

logger = logging.getLogger("distmix.federated.flower")
MESSAGE_TYPE = "query.distmix"
RECORD, FIELD = "distmix", "frame"
POLL_SECONDS = 0.2


def to_flower(request: DistmixMessage, node_id: int, ttl: float) -> Message:
    content = RecordDict({RECORD: ConfigRecord({FIELD: frames.encode(request)})})
    return Message(content, dst_node_id=int(node_id), message_type=MESSAGE_TYPE, ttl=ttl)


def from_flower(reply: Message) -> DistmixMessage:
    """The distmix message a Flower reply holds (``RequestError`` if it holds none)."""
    if reply.has_error():
        raise RequestError(f"Flower error {reply.error.code}: {reply.error.reason}")
    record = reply.content.config_records.get(RECORD)
    frame = None if record is None else record.get(FIELD)
    if not isinstance(frame, bytes):
        raise RequestError("the reply holds no distmix frame.")
    return frames.decode(frame)


class FlowerTransport:
    """Reach the sites of a manifest through a Flower ``Grid`` (inside a ServerApp).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
    sites : sequence of str
        The manifest's sites: waits up to ``wait_seconds`` for that many nodes,
        then asks each node its site's name.
    timeout : float
        Seconds a round waits for replies; later ones count as dropped out.
    """

    def __init__(
        self,
        grid: Any,
        sites: Sequence[str],
        *,
        timeout: float = 120.0,
        wait_seconds: float = 120.0,
    ) -> None:
        self.grid, self.timeout = grid, float(timeout)
        #: ``(request kind, seconds)`` of every exchange: where a federated fit's time goes
        self.timings: list[tuple[str, float]] = []
        deadline = time.monotonic() + wait_seconds
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < len(sites) and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = sorted(grid.get_node_ids())
        self._nodes: dict[str, int] = {}
        identified = self._round_trip({node: DistmixMessage("identify") for node in nodes})
        for node, reply in identified.items():
            name = reply.config.get("site")
            if not isinstance(name, str) or name not in sites or "error" in reply.config:
                logger.warning("node %s is not a site of this federation (%r)", node, name)
                continue
            if name in self._nodes:
                raise RequestError(f"two nodes claim to be site {name!r}.")
            self._nodes[name] = node
        logger.info("sites found: %s", ", ".join(f"{n} (node {i})" for n, i in self._nodes.items()))

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def exchange(self, requests: Mapping[str, DistmixMessage]) -> dict[str, DistmixMessage]:
        by_node = {
            self._nodes[name]: request for name, request in requests.items() if name in self._nodes
        }
        names = {node: name for name, node in self._nodes.items()}
        return {names[node]: reply for node, reply in self._round_trip(by_node).items()}

    def _round_trip(self, requests: Mapping[int, DistmixMessage]) -> dict[int, DistmixMessage]:
        """Push one message per node; the replies that arrive in time, in arrival order."""
        started = time.monotonic()
        kinds = {request.kind for request in requests.values()}
        messages = [to_flower(request, node, self.timeout) for node, request in requests.items()]
        pending = set(self.grid.push_messages(messages))
        replies: dict[int, DistmixMessage] = {}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                node = int(reply.metadata.src_node_id)
                try:
                    replies[node] = from_flower(reply)
                except RequestError as error:
                    logger.warning("node %s: %s", node, error)
            if pending:
                time.sleep(POLL_SECONDS)
        self.timings.append(("/".join(sorted(kinds)), time.monotonic() - started))
        return replies
