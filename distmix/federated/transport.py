"""How requests reach sites: the transport protocol, and its in-process form.

Layer: messages only; a transport knows nothing of tasks, masks or the EM loop.

A transport delivers one request to each of some sites and returns the replies
of those that answered; a site that does not answer (dropped, unreachable,
too slow) is simply absent. :class:`InProcessTransport` runs the sites'
handlers on threads in this process, each request and reply passed through
:func:`~distmix.federated.messages.check_message` exactly as a network
transport would (plain values and arrays, copied). The Flower transport
carries the same messages between organisations.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from distmix.federated.messages import Message, check_message


class Transport(Protocol):
    """Delivers requests to sites by name; the replies of those that answered."""

    @property
    def site_names(self) -> tuple[str, ...]: ...

    def exchange(self, requests: Mapping[str, Message]) -> dict[str, Message]: ...


class InProcessTransport:
    """Sites in this process (tests, benchmarks, one machine), answered side by side.

    Parameters
    ----------
    sites : sequence of Site
    drop : callable, optional
        ``drop(site_name, request) -> bool``: the site never sees a request for
        which it returns True, as if it had dropped out (tests of dropouts).
    arrival : callable, optional
        ``arrival(names) -> names``: the order replies arrive in (tests of order).
    """

    def __init__(
        self,
        sites: Sequence[Any],
        *,
        drop: Callable[[str, Message], bool] | None = None,
        arrival: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.sites = {site.name: site for site in sites}
        if len(self.sites) != len(sites):
            raise ValueError("sites of one federation need distinct names.")
        self.drop = drop
        self.arrival = arrival
        #: ``listener(site, request, reply)`` for every reply: an egress audit hears all
        self.listeners: list[Callable[[str, Message, Message], None]] = []
        #: requests delivered, by kind
        self.delivered: collections.Counter[str] = collections.Counter()
        #: exchanges (one request to each of some sites), by kind
        self.exchanges: collections.Counter[str] = collections.Counter()
        self._pool = ThreadPoolExecutor(max(1, len(self.sites)), thread_name_prefix="distmix-site")

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(self.sites)

    def exchange(self, requests: Mapping[str, Message]) -> dict[str, Message]:
        unknown = [name for name in requests if name not in self.sites]
        if unknown:
            raise ValueError(f"no site named {unknown[0]!r} in this transport.")
        delivered = {
            name: check_message(request, f"request to site {name!r}")
            for name, request in requests.items()
            if self.drop is None or not self.drop(name, request)
        }
        futures = {
            name: self._pool.submit(self.sites[name].handle, request)
            for name, request in delivered.items()
        }
        self.delivered.update(request.kind for request in delivered.values())
        self.exchanges.update({request.kind for request in requests.values()})
        replies = {}
        for name, future in futures.items():
            reply = check_message(future.result(), f"reply of site {name!r}")
            for listener in self.listeners:
                listener(name, delivered[name], reply)
            replies[name] = reply
        order = list(replies)
        if self.arrival is not None:
            order = self.arrival(order)
        return {name: replies[name] for name in order}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
