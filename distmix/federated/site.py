"""A site of a federation: its rows stay, only masked sums of its statistics leave.

Layer: the engines (a site runs its tasks on its own engine: local, or its
own Dask cluster), the task registry, and the federated codec, wire forms,
messages and masks. It knows nothing of the coordinator, the EM loop or the
estimator.

A :class:`Site` answers a fixed set of requests (:mod:`~distmix.federated.messages`),
each validated against its schema before anything runs, and refuses anything
else, naming the field. It never unpickles and never runs code it is sent: a
request names a task of :data:`~distmix.federated.wire.SITE_TASKS` and carries
its arguments as plain arrays. What it sends per round is one vector of
masked fixed-point words of the declared length (and, in threshold mode,
sealed shares of its round seed): never rows, row indices, per-block counts or
the position of a bad row. A site with NaN or infinite rows answers every
request with "site S has invalid rows", without saying which or how many.

Besides the schema, a site enforces the rules that keep the coordinator from
learning more than a sum over at least three sites:

* rounds only move forward within a session, and no nonce is accepted twice;
* the same request (task and arguments) is never aggregated over two
  different site sets (its *ledger*: the multi-round difference attack);
* in an unmasking, no site is unmasked both ways (its round seed and its mask
  key), and a site whose mask key was given up stays out of the session.

Under a private manifest (:attr:`Manifest.private`) a site answers only
private E-steps, with the manifest's own clipping ball, and at most the
manifest's ``dp_iterations`` of them (counted in its ledger across sessions
and retries: a refused or lost round is charged all the same). Where the noise
is distributed, it adds its share (:class:`~distmix.privacy.SiteShare`) to the
statistics before masking, so that neither the coordinator nor the sum of any
``threshold`` sites learns them without the whole noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from distmix.engines.factory import make_engine
from distmix.federated import codec, crypto, secagg, shamir, wire
from distmix.federated.manifest import MIN_SITES, Manifest
from distmix.federated.messages import (
    NONCE_BYTES,
    REQUEST_CONFIG,
    SESSION_BYTES,
    Message,
    RequestError,
    check_keys,
    check_message,
    decode_arguments,
    request_digest,
)
from distmix.params import Params
from distmix.privacy import ClipBall
from distmix.tasks import ROW_MOVING_TASKS

logger = logging.getLogger("distmix.federated.site")


class SiteRefusal(ValueError):
    """A well-formed request the site's rules refuse (ledger, rounds, unmasking)."""


class InvalidRowsError(ValueError):
    """The site holds rows with NaN or infinity (said without which or how many)."""


class Site:
    """One organisation's rows, and the only requests it answers about them.

    Parameters
    ----------
    data : array-like, dask array, Zarr array or its path/URL, optional
        The site's rows ``(n, D)``, read where they are (a dask array or Zarr
        source runs on the site's own Dask client, if one is set up).
    name : str
        The site's name in the federation manifest.
    sample_weight : array-like (n,), optional
        Row weights, kept at the site.
    block_size : int, optional
        Rows per block of the site's own engine.
    engine : Engine, optional
        An engine over the site's rows, instead of ``data``.
    manifest : Manifest, optional
        The federation manifest this site accepts (see :meth:`accept`).
    ledger : path, optional
        A JSON file that keeps the site's ledger across restarts (read at start,
        rewritten atomically before any reply that adds to it); in memory if not given.
    """

    def __init__(
        self,
        data: Any = None,
        name: str = "site",
        *,
        sample_weight: Any = None,
        block_size: int | None = None,
        engine: Any = None,
        manifest: Manifest | None = None,
        ledger: str | os.PathLike[str] | None = None,
    ) -> None:
        if (data is None) == (engine is None):
            raise ValueError("give a site either its data or an engine over its rows.")
        self.name = str(name)
        self._data, self._sample_weight, self._block_size = data, sample_weight, block_size
        self._engine = engine
        self._rows_ok: bool | None = None
        self.manifest: Manifest | None = None
        self._ledger_path = None if ledger is None else Path(ledger)
        self._ledger, self._private_releases = _read_ledger(self._ledger_path)
        # a personalised federation: the weights this site uses with the shared
        # components it was last sent, and the M-step of its last E-step (never sent)
        self._weights: np.ndarray | None = None
        self._weights_for: bytes | None = None
        self._next_weights: np.ndarray | None = None
        self._nonces: set[bytes] = set()
        self._session: bytes | None = None
        if manifest is not None:
            self.accept(manifest)

    def __repr__(self) -> str:
        return f"Site({self.name!r})"

    # -- set-up ---------------------------------------------------------------
    def set_batch(self, data: Any, sample_weight: Any = None) -> None:
        """Hold a new batch of rows (a federation's ``partial_fit`` rounds): the next
        requests run on it. Its shape is checked against the accepted manifest."""
        engine = make_engine(data, sample_weight, block_size=self._block_size, min_rows=1)
        if self.manifest is not None:
            self._check_engine(engine, self.manifest)
        self._data, self._sample_weight, self._engine = data, sample_weight, engine
        self._rows_ok = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = make_engine(
                self._data, self._sample_weight, block_size=self._block_size, min_rows=1
            )
        return self._engine

    def accept(self, manifest: Manifest) -> None:
        """Take part in federations under ``manifest`` (its bounds checked against this site).

        The site must be named in it, have its number of features and no more
        than its rows per site.
        """
        if self.name not in manifest.sites:
            raise ValueError(
                f"site {self.name!r} is not in the manifest's sites ({', '.join(manifest.sites)})."
            )
        self._check_engine(self.engine, manifest)
        self.manifest = manifest
        self._session = None

    def _check_engine(self, engine: Any, manifest: Manifest) -> None:
        if engine.n_features != manifest.n_features:
            raise ValueError(
                f"site {self.name!r} has {engine.n_features} features, the manifest "
                f"{manifest.n_features}."
            )
        if engine.n_rows > manifest.max_rows_per_site:
            raise ValueError(
                f"site {self.name!r} holds more rows than the manifest's max_rows_per_site "
                f"({manifest.max_rows_per_site:,}): the federation must agree on a larger bound."
            )

    def adapt_weights(
        self,
        weights: Any,
        means: Any,
        covariances: Any,
        covariance_type: str,
        *,
        max_iter: int = 200,
        tol: float = 1e-10,
    ) -> np.ndarray:
        """Fit this site's own mixing weights to fixed shared components, locally.

        EM over the weights alone (the components do not change, nothing is
        sent): how a site that joins a fitted personalised federation adapts.
        Starts from ``weights``; returns and keeps the site's weights.
        """
        pi = np.asarray(weights, dtype=np.float64)
        previous = -np.inf
        for _ in range(int(max_iter)):
            params = Params.from_covariances(pi, means, covariances, covariance_type)
            stats = self.engine.reduce("estep", params).to_host()
            if stats.n_nonfinite:
                raise InvalidRowsError(f"site {self.name!r} has invalid rows (NaN or infinity).")
            pi = stats.resp_sum / stats.resp_sum.sum()
            if stats.log_lik - previous <= tol * abs(stats.log_lik):
                break
            previous = stats.log_lik
        self._weights, self._weights_for, self._next_weights = pi, None, None
        return pi

    @property
    def personal_weights(self) -> np.ndarray | None:
        """This site's mixing weights in a personalised federation (never sent): the
        M-step of its last E-step, i.e. the weights that go with the shared
        components fitted from that E-step's sums."""
        return self._next_weights if self._next_weights is not None else self._weights

    # -- the one entry point ----------------------------------------------------
    def handle(self, message: Any) -> Message:
        """The reply to one request; errors are replies too (``config["error"]``)."""
        kind = getattr(message, "kind", None)
        kind = kind if isinstance(kind, str) and kind in REQUEST_CONFIG else "unknown"
        try:
            request = check_message(message, f"request to site {self.name!r}")
            if request.kind not in REQUEST_CONFIG:
                raise RequestError(
                    f"field 'kind': a site answers {', '.join(REQUEST_CONFIG)} requests only."
                )
            if self.manifest is None:
                raise SiteRefusal(f"site {self.name!r} has accepted no federation manifest.")
            return getattr(self, "_" + request.kind)(request)
        except InvalidRowsError as error:
            return _error(kind, "invalid_rows", str(error))
        except codec.BoundError as error:
            return _error(kind, "bound", str(error))
        except (RequestError, SiteRefusal) as error:
            return _error(kind, "refused", f"site {self.name!r} refused the request: {error}")
        except Exception:  # details stay in the site's log: they may name rows
            logger.exception("site %r failed to answer a %s request", self.name, kind)
            return _error(kind, "failed", f"site {self.name!r} failed (see the site's log).")

    # -- session set-up ---------------------------------------------------------
    def _identify(self, request: Message) -> Message:
        check_keys("identify", request, set(), REQUEST_CONFIG["identify"])
        assert self.manifest is not None
        return Message("identify", config={"site": self.name, "manifest": self.manifest.digest})

    def _hello(self, request: Message) -> Message:
        check_keys("hello", request, set(), REQUEST_CONFIG["hello"])
        assert self.manifest is not None
        session = request.config["session"]
        if len(session) != SESSION_BYTES:
            raise RequestError(f"field 'session' must be {SESSION_BYTES} bytes.")
        if request.config["manifest"] != self.manifest.digest:
            raise SiteRefusal(
                "field 'manifest': the request's manifest is not the one this site accepted."
            )
        self._session = session
        self._share_keys = crypto.KeyPair()
        # mask keys are used for one round each: the next round's pair is made (and, in
        # threshold mode, shared) one round ahead, so that giving up a dropped site's
        # key opens that round's pairwise masks only, never a round it uploaded in
        self._next_mask_keys = crypto.KeyPair()
        self._mask_keys: crypto.KeyPair | None = None
        self._roster: list[str] = []
        self._share_publics: dict[str, bytes] = {}
        self._key_shares: dict[str, bytes] = {}  # shares of this round's peers' mask keys
        self._last_round = (0, -1)
        self._current: dict[str, Any] | None = None
        self._unmasked_rounds: set[tuple[int, int]] = set()
        self._gave_up: set[str] = set()  # sites whose mask key this site revealed
        self._computed = False
        return Message(
            "hello",
            config={
                "mask_key": self._next_mask_keys.public,
                "share_key": self._share_keys.public,
            },
        )

    def _check_session(self, request: Message) -> None:
        if self._session is None or request.config["session"] != self._session:
            raise SiteRefusal("field 'session': not this site's current session.")

    def _keys(self, request: Message) -> Message:
        check_keys("keys", request, set(), REQUEST_CONFIG["keys"])
        self._check_session(request)
        assert self.manifest is not None
        if self._computed:
            raise SiteRefusal("field 'roster': the session's roster is fixed once rounds begin.")
        roster = _names(request.config["roster"], "roster", self.manifest)
        if self.name not in roster:
            raise RequestError(f"field 'roster' does not name this site ({self.name!r}).")
        self._check_size(roster, "roster")
        mask_keys = _byte_list(request.config["mask_keys"], "mask_keys", len(roster), 32)
        share_keys = _byte_list(request.config["share_keys"], "share_keys", len(roster), 32)
        me = roster.index(self.name)
        mine = (self._next_mask_keys.public, self._share_keys.public)
        if (mask_keys[me], share_keys[me]) != mine:
            raise SiteRefusal("fields 'mask_keys'/'share_keys' do not hold this site's keys.")
        self._roster = roster
        self._share_publics = dict(zip(roster, share_keys, strict=True))
        return Message("keys", config={"sealed": self._sealed_key_shares(roster)})

    def _sealed_key_shares(self, sites: list[str]) -> list[bytes]:
        """Shares of the next round's mask key, sealed to each of ``sites`` (threshold
        mode; an empty list in all-or-nothing mode, which never unmasks)."""
        assert self.manifest is not None
        if self.manifest.mode != "threshold":
            return []
        private = self._next_mask_keys.private_bytes
        shares = shamir.split(private, self._points(sites), self._t())
        public = self._next_mask_keys.public
        sealed = []
        for name in sites:
            if name == self.name:
                sealed.append(b"")
            else:
                aad = secagg.share_aad(self._session_id, "key", self.name, name, public)
                sealed.append(crypto.seal(self._seal_key(name), shares[self._point(name)], aad))
        return sealed

    # -- a round ------------------------------------------------------------------
    def _compute(self, request: Message) -> Message:
        assert self.manifest is not None
        task, args = decode_arguments(request, self.manifest)  # the schema, first
        self._check_session(request)
        c = request.config
        round_id, attempt = c["round"], c["attempt"]
        self._check_round(round_id, attempt)
        sites = _names(c["sites"], "sites", self.manifest)
        unknown = [s for s in sites if s not in self._roster]
        if self.name not in sites or unknown:
            raise RequestError(
                "field 'sites' must name this site and only sites of the session's roster."
            )
        self._check_size(sites, "sites")
        if self._gave_up & set(sites):
            raise SiteRefusal(
                f"field 'sites': {sorted(self._gave_up & set(sites))} dropped out and had "
                "their masks revealed; they cannot rejoin this session."
            )
        aon = self.manifest.mode == "all-or-nothing"
        mask_keys = _byte_list(c["mask_keys"], "mask_keys", len(sites), 32)
        sealed_keys = _byte_list(c["sealed_keys"], "sealed_keys", 0 if aon else len(sites), None)
        # this round's mask key: the pair made one round ahead (a retry keeps it)
        keys = self._next_mask_keys if round_id > self._last_round[0] else self._mask_keys
        if keys is None or mask_keys[sites.index(self.name)] != keys.public:
            raise SiteRefusal("field 'mask_keys' does not hold this site's key for the round.")
        key_shares = {}
        for name, public, box in zip(sites, mask_keys, sealed_keys, strict=False):
            if name != self.name:
                aad = secagg.share_aad(self._session_id, "key", name, self.name, public)
                key_shares[name] = self._unseal(name, box, aad, "sealed_keys")
        self._check_nonce(c["nonce"])
        self._check_private(task, args)
        if self.manifest.private and aon and sorted(sites) != sorted(self.manifest.sites):
            # every site's noise share is sized for a sum over all of them
            raise SiteRefusal(
                "field 'sites': an all-or-nothing private federation sums every site of its "
                "manifest (each adds its share of the noise for a sum over all of them)."
            )
        digest = request_digest(request)
        if aon:
            self._check_ledger(digest, frozenset(sites))
        self._charge_private(task)
        # every check passed: from here on the round is this site's
        self._last_round = (round_id, attempt)
        self._mask_keys, self._key_shares = keys, key_shares
        self._next_mask_keys = crypto.KeyPair()
        self._computed = True
        if c.get("site_weights"):
            args = (self._own_weights(args[0]), *args[1:])
        result = self._run(task, args)
        if c.get("site_weights") and task in ("estep", "estep_fingerprint"):
            stats = getattr(result, "stats", result).to_host()
            total = float(stats.resp_sum.sum())
            if total > 0:  # the M-step of this site's weights, used from the next Params on
                self._next_weights = stats.resp_sum / total
        like = wire.template(task, self.manifest.n_features, args)
        values = wire.values(result, task)
        if task in wire.PRIVATE_TASKS and self.manifest.dp_noise == "distributed":
            values = self._noised(values, task, like)
        codec.check_bounds(
            values, wire.bounded_fields(task, like, self.manifest), f"site {self.name!r}"
        )
        words = codec.encode(values, self.manifest.words_per_value, self.manifest.digit_bits)
        masked = words.reshape(-1)
        masked = masked + secagg.pairwise_masks(
            self.name,
            keys,
            dict(zip(sites, mask_keys, strict=True)),
            self._roster,
            salt=self.manifest.digest,
            session=self._session_id,
            round_id=round_id,
            attempt=attempt,
            n_words=masked.size,
        )
        config: dict[str, Any] = {
            "next_mask_key": self._next_mask_keys.public,
            "sealed_keys": self._sealed_key_shares(sites),
        }
        seed_share = None
        if not aon:
            seed = crypto.random_key()
            masked = masked + secagg.self_mask(seed, masked.size)
            shares = shamir.split(seed, self._points(sites), self._t())
            tag = secagg.round_tag(round_id, attempt)
            sealed = []
            for name in sites:
                if name == self.name:
                    seed_share = shares[self._point(name)]
                    sealed.append(b"")
                else:
                    aad = secagg.share_aad(self._session_id, "seed", self.name, name, tag)
                    sealed.append(crypto.seal(self._seal_key(name), shares[self._point(name)], aad))
            config["sealed_seeds"] = sealed
        self._current = {
            "round": (round_id, attempt),
            "sites": sites,
            "digest": digest,
            "seed_share": seed_share,
        }
        return Message("compute", arrays={"masked": masked}, config=config)

    def _own_weights(self, params: Params) -> Params:
        """``params`` with this site's mixing weights (a personalised federation).

        The weights a site's E-step gives are its M-step: they are used from the
        first request with new shared components on, so that a retried round
        (same components) sees the same weights. A site starts from the
        request's weights.
        """
        shared = _components_digest(params)
        if shared != self._weights_for:
            if self._next_weights is not None:
                self._weights = self._next_weights
            self._weights_for, self._next_weights = shared, None
        if self._weights is None or self._weights.shape != params.weights.shape:
            self._weights = np.array(params.weights, copy=True)
        return Params(
            params.covariance_type,
            self._weights,
            params.means,
            params.covariances,
            params.precisions_cholesky,
        )

    def _run(self, task: str, args: tuple) -> Any:
        """The task over this site's rows; its rows checked once for NaN and infinity."""
        if task in ROW_MOVING_TASKS:  # not in SITE_TASKS either: a second lock
            raise RequestError(f"field 'task': {task!r} moves rows; a site never runs it.")
        if self._rows_ok is None:
            self._rows_ok = float(self.engine.reduce("nonfinite").count) == 0.0
        if self._rows_ok:
            result = self.engine.reduce(task, *args)
            if not wire.nonfinite_count(result):
                return result
            self._rows_ok = False
        raise InvalidRowsError(
            f"site {self.name!r} has invalid rows (NaN or infinity); they are not sent: "
            "the site must fix or drop them."
        )

    def _unmask(self, request: Message) -> Message:
        check_keys("unmask", request, set(), REQUEST_CONFIG["unmask"])
        self._check_session(request)
        assert self.manifest is not None
        if self.manifest.mode != "threshold":
            raise SiteRefusal("an all-or-nothing federation has nothing to unmask.")
        c = request.config
        current = self._current
        if current is None or (c["round"], c["attempt"]) != current["round"]:
            raise SiteRefusal("fields 'round'/'attempt': not the round this site last computed.")
        if current["round"] in self._unmasked_rounds:
            raise SiteRefusal(f"field 'round': round {c['round']} was already unmasked.")
        survivors = _names(c["survivors"], "survivors", self.manifest)
        dropped = _names(c["dropped"], "dropped", self.manifest)
        if set(survivors) & set(dropped):
            raise SiteRefusal(
                f"fields 'survivors'/'dropped': {sorted(set(survivors) & set(dropped))} "
                "asked both ways (its round seed and its mask key): never both."
            )
        if sorted(survivors + dropped) != sorted(current["sites"]) or self.name not in survivors:
            raise RequestError(
                "fields 'survivors'/'dropped' must split the round's sites, this one a survivor."
            )
        if len(survivors) < max(MIN_SITES, self._t()):
            raise SiteRefusal(
                f"field 'survivors': {len(survivors)} sites; no sum over fewer than "
                f"{max(MIN_SITES, self._t())} is unmasked."
            )
        sealed = _byte_list(c["sealed"], "sealed", len(survivors), None)
        tag = secagg.round_tag(*current["round"])
        seed_shares = []
        for name, box in zip(survivors, sealed, strict=True):
            if name == self.name:
                seed_shares.append(current["seed_share"])
            else:
                aad = secagg.share_aad(self._session_id, "seed", name, self.name, tag)
                seed_shares.append(self._unseal(name, box, aad, "sealed"))
        key_shares = []
        for name in dropped:
            share = self._key_shares.get(name)
            if share is None:
                raise SiteRefusal(f"field 'dropped': this site holds no key share of {name!r}.")
            key_shares.append(share)
        self._check_nonce(c["nonce"])
        self._check_ledger(current["digest"], frozenset(survivors))
        self._unmasked_rounds.add(current["round"])
        self._gave_up |= set(dropped)
        return Message("unmask", config={"seed_shares": seed_shares, "key_shares": key_shares})

    # -- rules ----------------------------------------------------------------------
    def _unseal(self, sender: str, box: bytes, aad: bytes, field: str) -> bytes:
        try:
            return crypto.unseal(self._seal_key(sender), box, aad)
        except ValueError:
            raise RequestError(
                f"field {field!r}: the share from {sender!r} failed authentication."
            ) from None

    # -- privacy ------------------------------------------------------------------
    def _check_private(self, task: str, args: tuple) -> None:
        """A private manifest: only private E-steps, about its own ball; otherwise none."""
        assert self.manifest is not None
        if not self.manifest.private:
            if task in wire.PRIVATE_TASKS:
                raise SiteRefusal(
                    f"field 'task': {task!r} needs a private manifest (its dp_ fields); "
                    "this site accepted a federation without differential privacy."
                )
            return
        if task not in wire.PRIVATE_TASKS:
            raise SiteRefusal(
                f"field 'task': this federation is private (its manifest's dp_ fields); its "
                f"sites answer only {', '.join(sorted(wire.PRIVATE_TASKS))}, not {task!r}."
            )
        if (
            self._sample_weight is not None
            or getattr(self.engine, "sample_weight", None) is not None
        ):
            # the sensitivities are for rows of weight 1: a weight w moves the sums w times
            raise SiteRefusal(
                f"site {self.name!r} holds row weights: a private federation's sums are of "
                "rows of weight 1 (a weighted row would move them further than the budget "
                "accounts for)."
            )
        ball = self.manifest.privacy().ball
        sent = next(arg for arg in args if isinstance(arg, ClipBall))
        if sent.radius != ball.radius or not np.array_equal(sent.centre, ball.centre):
            raise SiteRefusal(
                "fields 'clip_centre'/'clip_radius' are not the manifest's clipping ball "
                "(its centre and dp_clip_radius)."
            )

    def _charge_private(self, task: str) -> None:
        """Count one private release against the manifest's plan (before computing: a
        round that is lost or retried is charged all the same): one first release of
        the rows' moments, ``dp_iterations`` private E-steps."""
        assert self.manifest is not None
        if task not in wire.PRIVATE_TASKS:
            return
        key = f"{self.manifest.digest.hex()}/{task}"
        spent = self._private_releases.get(key, 0)
        first = task == "private_moments"
        allowed = 1 if first else int(self.manifest.dp_iterations or 0)
        if spent >= allowed:
            what = (
                "first release (the rows' count and moments)"
                if first
                else f"{allowed} private E-steps (dp_iterations)"
            )
            raise SiteRefusal(
                f"site {self.name!r} has answered the {what} its manifest allows: its "
                "privacy budget under this manifest is spent. Another fit needs a new "
                "manifest, with a budget every site agrees to."
            )
        self._private_releases[key] = spent + 1
        if self._ledger_path is not None:
            _write_ledger(self._ledger_path, self._ledger, self._private_releases)

    def _noised(self, values: np.ndarray, task: str, like: Any) -> np.ndarray:
        """``values`` with this site's share of each field's noise (distributed noise)."""
        assert self.manifest is not None
        plan = self.manifest.privacy_plan()
        rho = plan.init_rho if task == "private_moments" else plan.iteration_rho
        slots = wire.slots(task, like)
        shares = plan.site_shares(self.manifest.noise_parts, {s.name: s.size for s in slots}, rho)
        parts = np.split(values, np.cumsum([slot.size for slot in slots])[:-1])
        return np.concatenate(
            [
                shares[slot.name].add(part, slot.name)
                for slot, part in zip(slots, parts, strict=True)
            ]
        )

    def _check_round(self, round_id: int, attempt: int) -> None:
        if not 1 <= round_id < 2**63:
            raise RequestError("field 'round' must be in [1, 2**63).")
        if not 0 <= attempt < 2**31:
            raise RequestError("field 'attempt' must be in [0, 2**31).")
        if round_id < 1 or attempt < 0 or (round_id, attempt) <= self._last_round:
            raise SiteRefusal(
                f"fields 'round'/'attempt': ({round_id}, {attempt}) is stale; this site last "
                f"computed round {self._last_round[0]}, attempt {self._last_round[1]}."
            )

    def _check_nonce(self, nonce: bytes) -> None:
        if len(nonce) != NONCE_BYTES:
            raise RequestError(f"field 'nonce' must be {NONCE_BYTES} bytes.")
        if nonce in self._nonces:
            raise SiteRefusal("field 'nonce': replayed (this site has seen it before).")
        self._nonces.add(nonce)

    def _check_ledger(self, digest: bytes, sites: frozenset[str]) -> None:
        before = self._ledger.get(digest)
        if before is not None and before != sites:
            raise SiteRefusal(
                f"field 'sites': this request was aggregated over {sorted(before)}; "
                f"aggregating it over {sorted(sites)} would reveal the difference."
            )
        if before is None:
            self._ledger[digest] = sites
            if self._ledger_path is not None:
                _write_ledger(self._ledger_path, self._ledger, self._private_releases)

    def _check_size(self, sites: list[str], what: str) -> None:
        need = max(MIN_SITES, self._t())
        if len(sites) < need:
            raise SiteRefusal(
                f"field {what!r}: {len(sites)} sites; no sum over fewer than {need} is released."
            )

    # -- helpers --------------------------------------------------------------------
    @property
    def _session_id(self) -> bytes:
        assert self._session is not None
        return self._session

    def _t(self) -> int:
        assert self.manifest is not None
        return int(self.manifest.threshold or MIN_SITES)

    def _point(self, name: str) -> int:
        return self._roster.index(name) + 1

    def _points(self, names: list[str]) -> list[int]:
        return [self._point(n) for n in names]

    def _seal_key(self, peer: str) -> bytes:
        assert self.manifest is not None
        return secagg.share_key(
            self._share_keys,
            self._share_publics[peer],
            salt=self.manifest.digest,
            session=self._session_id,
            sender=self.name,
            recipient=peer,
        )


def _read_ledger(path: Path | None) -> tuple[dict[bytes, frozenset[str]], dict[str, int]]:
    """The requests a site aggregated (and over which sites), and the private releases
    it answered under each private manifest (by digest and task)."""
    if path is None or not path.exists():
        return {}, {}
    try:
        record = json.loads(path.read_text())
        released = {bytes.fromhex(k): frozenset(v) for k, v in record["released"].items()}
        private = {str(k): int(v) for k, v in record.get("private", {}).items()}
        return released, private
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"site ledger {path} is unreadable ({error}); a site must not forget what it "
            "released: restore the file, or move it away knowingly."
        ) from None


def _write_ledger(path: Path, ledger: dict[bytes, frozenset[str]], private: dict[str, int]) -> None:
    record: dict[str, Any] = {"format": "distmix-site-ledger/1"}
    record["released"] = {k.hex(): sorted(v) for k, v in ledger.items()}
    if private:
        record["private"] = dict(private)
    text = json.dumps(record)
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(text)
    os.replace(staged, path)


def _components_digest(params: Params) -> bytes:
    h = hashlib.sha256(params.covariance_type.encode())
    for array in (params.means, params.precisions_cholesky):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.digest()


def _error(kind: str, code: str, text: str) -> Message:
    return Message(kind, config={"error": text, "code": code})


def _names(value: list, field: str, manifest: Manifest) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise RequestError(f"field {field!r} must be a list of site names.")
    if len(set(value)) != len(value) or any(v not in manifest.sites for v in value):
        raise RequestError(f"field {field!r} must name distinct sites of the manifest.")
    return list(value)


def _byte_list(value: list, field: str, size: int, each: int | None) -> list[bytes]:
    if len(value) != size or not all(isinstance(v, bytes) for v in value):
        raise RequestError(f"field {field!r} must be a list of {size} byte strings.")
    if each is not None and any(len(v) != each for v in value):
        raise RequestError(f"field {field!r} must hold {each}-byte values.")
    return list(value)
