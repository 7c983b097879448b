"""The federated engine: the engine protocol over sites, answered by exact secure sums.

Layer: the engine protocol, the task registry, and the federated codec, wire
forms, messages, masks and transports. It knows nothing of the EM loop or the
estimator, which drive it exactly as they drive any engine.

For each ``reduce(task, *args)`` the coordinator sends every site of the
session one compute request (a round), receives one vector of masked
fixed-point words from each, adds them modulo ``2**64`` and, in threshold
mode, asks the survivors for the shares that remove the remaining masks
(:mod:`~distmix.federated.secagg`). What it decodes is the exact sum of the
sites' results (:mod:`~distmix.federated.codec`), so the total does not depend
on the order replies arrive in, and equals, to float64 rounding of each site's
own sums, what one engine over all the rows gives.

The federation looks like one block holding all its rows: no per-site row
counts are known here, only their secure sum. Tasks whose results are rows or
per-row outputs (row sampling, ``take_rows``, predictions) are refused by
name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from distmix.federated import codec, crypto, secagg, shamir, wire
from distmix.federated.manifest import MIN_SITES, Manifest
from distmix.federated.messages import (
    Message,
    encode_arguments,
    new_nonce,
    new_session,
)
from distmix.federated.transport import Transport
from distmix.nonfinite import NonFiniteInputError
from distmix.tasks import TASKS, TaskName, check_arguments, get_task

logger = logging.getLogger("distmix.federated")

#: what a federation refuses: every task whose result holds rows or per-row outputs
FEDERATION_REFUSED = frozenset(TASKS) - frozenset(wire.SITE_TASKS)


class SiteError(ValueError):
    """A site refused a request or failed; ``site`` names it, ``code`` says why."""

    def __init__(self, message: str, site: str, code: str) -> None:
        super().__init__(message)
        self.site, self.code = site, code


class SiteInvalidRowsError(NonFiniteInputError):
    """A site holds NaN or infinite rows (which, or how many, never leaves it)."""

    def __init__(self, message: str, site: str) -> None:
        super().__init__(message)
        self.site, self.code = site, "invalid_rows"


class FederationAbort(RuntimeError):
    """Too few sites answered for a round to be released; names the missing sites."""


class FederatedEngine:
    """An engine whose rows are at the sites of a federation (see the module docstring).

    Parameters
    ----------
    transport : Transport
        Reaches the sites by name.
    manifest : Manifest
        The public bounds and roster every site accepted.
    max_attempts : int
        All-or-nothing mode: how many times a round is tried with the same sites
        before the fit stops, naming the sites that did not answer.
    site_weights : bool
        Personalised weights: every site uses its own mixing weights (kept and
        updated at the site, never sent) with the shared components; the sums
        are those of the per-site-weights model, whose EM this is exactly.
    """

    split_every = 2
    refused_tasks: frozenset[str] = FEDERATION_REFUSED

    def __init__(
        self,
        transport: Transport,
        manifest: Manifest,
        *,
        max_attempts: int = 3,
        site_weights: bool = False,
    ) -> None:
        self.transport = transport
        self.manifest = manifest
        self.n_features = manifest.n_features
        #: the manifest's public centre: where a start that moves no row takes its
        #: first moments about (``init_params="moments"``)
        self.public_centre = np.broadcast_to(
            np.asarray(manifest.centre, dtype=np.float64), (manifest.n_features,)
        ).copy()
        self.max_attempts = int(max_attempts)
        self.site_weights = bool(site_weights)
        self._round = 0
        self.dropped: list[str] = []
        self._session = new_session()
        self._n_rows: int | None = None
        #: a private federation's plan (its manifest's budget over ``dp_iterations``), and
        #: whether its sites add the noise (else the private fit adds it to the sums)
        self.privacy_plan = manifest.privacy_plan()
        self.noise_at_sites = manifest.private and manifest.dp_noise == "distributed"
        self.noise_parts = manifest.noise_parts
        self.last_summed = 0
        # a private federation runs private E-steps only; any other, none of them
        # (its sites enforce the same)
        if manifest.private:
            self.refused_tasks = frozenset(TASKS) - wire.PRIVATE_TASKS
        else:
            self.refused_tasks = FEDERATION_REFUSED | wire.PRIVATE_TASKS
        self._by = "a private federation" if manifest.private else "a federation"
        self._set_up()

    # -- the engine protocol ----------------------------------------------------
    @property
    def n_rows(self) -> int:
        """The federation's rows: a secure sum (one round, on first use)."""
        if self.manifest.private:
            raise ValueError(
                "a private federation does not release its row count (its sites answer "
                "only private E-steps)."
            )
        if self._n_rows is None:
            self._n_rows = int(self.reduce("fingerprint").n_rows)
        return self._n_rows

    @property
    def block_rows(self) -> tuple[int, ...]:
        """One block of all the federation's rows (per-site counts never leave the sites)."""
        return (self.n_rows,)

    @property
    def row_offsets(self) -> tuple[int, ...]:
        return (0,)

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites of this session still in the fit."""
        return tuple(self._roster)

    def map_blocks(self, task: TaskName, *args: Any) -> Any:
        get_task(task, "map", self.refused_tasks, by=self._by)
        raise AssertionError("unreachable: a federation refuses every map task")

    def reduce(self, task: TaskName, *args: Any) -> Any:
        """The exact secure sum over the sites of ``task``'s results (one round)."""
        spec = get_task(task, "reduce", self.refused_tasks, by=self._by)
        check_arguments(spec, args)
        like = wire.template(task, self.n_features, args)
        n_values = sum(f.size for f in wire.slots(task, like))
        n_words = n_values * self.manifest.words_per_value
        arrays, config = encode_arguments(task, args, site_weights=self.site_weights)
        config.update(session=self._session, task=task, task_version=spec.version)
        self._round += 1
        missing: list[str] = []
        for attempt in range(self.max_attempts):
            sites = list(self._roster)
            aon = self.manifest.mode == "all-or-nothing"
            requests = {
                name: Message(
                    "compute",
                    arrays,
                    {
                        **config,
                        "round": self._round,
                        "attempt": attempt,
                        "nonce": new_nonce(),
                        "sites": sites,
                        # this round's mask keys, and the shares of them sealed to ``name``
                        "mask_keys": [self._mask_publics[u] for u in sites],
                        "sealed_keys": []
                        if aon
                        else [b"" if u == name else self._sealed_keys[u][name] for u in sites],
                    },
                )
                for name in sites
            }
            replies = self.transport.exchange(requests)
            self._raise_site_errors(replies, sites)
            # summed in the order replies arrive: modulo 2**64, every order gives the same
            masked = {
                name: self._masked_vector(reply, name, n_words)
                for name, reply in replies.items()
                if name in sites
            }
            if aon:
                missing = [name for name in sites if name not in masked]
                if missing:
                    logger.warning(
                        "round %d, attempt %d: no answer from %s; trying again with the same sites",
                        self._round,
                        attempt,
                        ", ".join(missing),
                    )
                    continue
                total = _sum_words(masked.values(), n_words)
                self._next_keys(replies, sites)
            else:
                # the sites that answered hold their next round's keys from now on, even
                # if this round cannot be unmasked
                publics = dict(self._mask_publics)  # this round's
                self._next_keys(replies, sites)
                total = self._unmask(masked, replies, sites, n_words, attempt, publics)
            summed = codec.decode(
                total.reshape(n_values, self.manifest.words_per_value), self.manifest.digit_bits
            )
            #: how many sites this round's sum holds (their noise shares, in a private one)
            self.last_summed = len(masked) if aon else len(self._roster)
            return wire.rebuild(like, summed, task)
        raise FederationAbort(
            f"round {self._round}: {', '.join(repr(m) for m in missing)} did not answer in "
            f"{self.max_attempts} attempts; an all-or-nothing federation releases no sum "
            "without every site (threshold mode tolerates dropouts)."
        )

    # -- set-up -----------------------------------------------------------------------
    def _set_up(self) -> None:
        """Keys of a new session: hello (each site's share key and first mask key), then
        the roster and public keys (each site answers with the shares of its first mask
        key, sealed to each other site; the first compute request routes them)."""
        manifest = self.manifest
        reachable = [s for s in manifest.sites if s in self.transport.site_names]
        replies = self.transport.exchange(
            {
                s: Message("hello", config={"session": self._session, "manifest": manifest.digest})
                for s in reachable
            }
        )
        self._raise_site_errors(replies, reachable)
        roster = self._enough([s for s in manifest.sites if s in replies], "set-up")
        keys = {
            s: (
                _key(replies[s], "mask_key", s),
                _key(replies[s], "share_key", s),
            )
            for s in roster
        }
        while True:
            request = {
                "session": self._session,
                "roster": list(roster),
                "mask_keys": [keys[s][0] for s in roster],
                "share_keys": [keys[s][1] for s in roster],
            }
            replies = self.transport.exchange({s: Message("keys", config=request) for s in roster})
            self._raise_site_errors(replies, roster)
            answered = [s for s in roster if s in replies]
            if answered == roster:
                break
            roster = self._enough(answered, "set-up")
        self._roster = roster
        self._session_roster = tuple(roster)
        self._mask_publics = {s: keys[s][0] for s in roster}
        size = len(roster) if manifest.mode == "threshold" else 0
        self._sealed_keys = {
            s: dict(zip(roster, _byte_list(replies[s], "sealed", size, s), strict=False))
            for s in roster
        }

    def _next_keys(self, replies: Mapping[str, Message], sites: list[str]) -> None:
        """The next round's mask keys (and their sealed shares) from this round's replies."""
        size = len(sites) if self.manifest.mode == "threshold" else 0
        for name in sites:
            reply = replies.get(name)
            if reply is None:  # dropped out: it leaves the fit
                continue
            self._mask_publics[name] = _key(reply, "next_mask_key", name)
            sealed = _byte_list(reply, "sealed_keys", size, name)
            self._sealed_keys[name] = dict(zip(sites, sealed, strict=False))

    def _enough(self, sites: list[str], stage: str) -> list[str]:
        need = max(MIN_SITES, int(self.manifest.threshold or MIN_SITES))
        if self.manifest.private and self.manifest.mode == "all-or-nothing":
            need = len(self.manifest.sites)  # every site's share of the noise, or no sum
        if len(sites) < need:
            missing = [s for s in self.manifest.sites if s not in sites]
            raise FederationAbort(
                f"{stage}: only {len(sites)} site(s) answered ({', '.join(sites) or 'none'}); "
                f"{', '.join(missing)} did not, and no sum over fewer than {need} is released."
            )
        return sites

    # -- unmasking ----------------------------------------------------------------------
    def _unmask(
        self,
        masked: Mapping[str, np.ndarray],
        replies: Mapping[str, Message],
        sites: list[str],
        n_words: int,
        attempt: int,
        publics: Mapping[str, bytes],
    ) -> np.ndarray:
        """The survivors' sum: their self masks and the dropped sites' pairwise masks
        removed (``publics``: the round's mask public keys)."""
        t = int(self.manifest.threshold or MIN_SITES)
        survivors = [s for s in sites if s in masked]
        dropped = [s for s in sites if s not in masked]
        if len(survivors) < max(t, MIN_SITES):
            raise FederationAbort(
                f"round {self._round}: {', '.join(dropped)} dropped out before uploading; "
                f"{len(survivors)} site(s) left ({', '.join(survivors) or 'none'}), fewer "
                f"than the threshold {max(t, MIN_SITES)}: the round's sum cannot be released."
            )
        sealed = {u: _byte_list(replies[u], "sealed_seeds", len(sites), u) for u in survivors}
        requests = {
            v: Message(
                "unmask",
                config={
                    "session": self._session,
                    "round": self._round,
                    "attempt": attempt,
                    "nonce": new_nonce(),
                    "survivors": survivors,
                    "dropped": dropped,
                    "sealed": [sealed[u][sites.index(v)] for u in survivors],
                },
            )
            for v in survivors
        }
        answers = self.transport.exchange(requests)
        self._raise_site_errors(answers, survivors)
        helpers = [v for v in survivors if v in answers]
        if len(helpers) < t:
            silent = [v for v in survivors if v not in answers]
            raise FederationAbort(
                f"round {self._round}: {', '.join(silent)} dropped out while unmasking; "
                f"{len(helpers)} of the threshold {t} shares arrived: the round's sum cannot "
                "be recovered."
            )
        # Shamir points and mask signs follow the session's roster, whoever dropped since
        roster = self._session_roster
        point = {s: roster.index(s) + 1 for s in roster}
        seed_shares = {v: _byte_list(answers[v], "seed_shares", len(survivors), v) for v in helpers}
        key_shares = {v: _byte_list(answers[v], "key_shares", len(dropped), v) for v in helpers}
        total = _sum_words(masked.values(), n_words)
        for i in range(len(survivors)):
            seed = shamir.combine({point[v]: seed_shares[v][i] for v in helpers}, t, 32)
            total -= secagg.self_mask(seed, n_words)
        for i, u in enumerate(dropped):
            private = shamir.combine({point[v]: key_shares[v][i] for v in helpers}, t, 32)
            keys = crypto.KeyPair(private)
            for v in survivors:
                key = secagg.pair_key(
                    keys,
                    publics[v],
                    salt=self.manifest.digest,
                    session=self._session,
                    round_id=self._round,
                    attempt=attempt,
                    names=(u, v),
                )
                stream = crypto.keystream_words(key, n_words)
                # v added the stream if it comes first in the roster, else subtracted it
                if roster.index(v) < roster.index(u):
                    total -= stream
                else:
                    total += stream
        if dropped:
            logger.warning(
                "round %d: %s dropped out; the fit goes on over %s without them",
                self._round,
                ", ".join(dropped),
                ", ".join(survivors),
            )
            self.dropped += dropped
            self._roster = [s for s in self._roster if s not in dropped]
        return total

    # -- replies ----------------------------------------------------------------------
    def _raise_site_errors(self, replies: Mapping[str, Message], order: list[str]) -> None:
        """Raise the first error a site replied with (in roster order: deterministic)."""
        for name in order:
            reply = replies.get(name)
            if reply is None or "error" not in reply.config:
                continue
            text, code = str(reply.config["error"]), str(reply.config.get("code", "failed"))
            if code == "invalid_rows":
                raise SiteInvalidRowsError(text, name)
            raise SiteError(text, name, code)

    def _masked_vector(self, reply: Message, site: str, n_words: int) -> np.ndarray:
        value = reply.arrays.get("masked")
        if (
            reply.kind != "compute"
            or set(reply.arrays) != {"masked"}
            or value is None
            or value.dtype != np.uint64
            or value.shape != (n_words,)
        ):
            raise SiteError(
                f"site {site!r} sent a malformed reply (expected one uint64 vector of "
                f"{n_words} words).",
                site,
                "malformed",
            )
        return value


def _sum_words(vectors: Any, n_words: int) -> np.ndarray:
    total = np.zeros(n_words, dtype=np.uint64)
    for vector in vectors:
        total += vector  # modulo 2**64
    return total


def _key(reply: Message, name: str, site: str) -> bytes:
    value = reply.config.get(name)
    if not isinstance(value, bytes) or len(value) != crypto.KEY_BYTES:
        raise SiteError(f"site {site!r} sent no valid {name}.", site, "malformed")
    return value


def _byte_list(reply: Message, name: str, size: int, site: str) -> list[bytes]:
    value = reply.config.get(name)
    if (
        not isinstance(value, list)
        or len(value) != size
        or not all(isinstance(v, bytes) for v in value)
    ):
        raise SiteError(
            f"site {site!r} sent a malformed {name!r} (expected {size} byte strings).",
            site,
            "malformed",
        )
    return value
