"""What a federation lets the coordinator learn: only exact sums over at least three sites.

Real sites, real keys, real masks throughout (no mocks of the cryptography):
the masked words a site sends look uniform per limb while its own encoding does
not; the same statistics never travel under the same mask twice; dropouts at
every stage of threshold mode give the exact pooled statistics of the sites
that uploaded (or abort, naming the missing sites); a site never gives up a
round seed and a mask key of one site, never aggregates the same request over
two site sets (the difference would be one site's statistics) and never sums
over fewer than three sites; every reply a site sends during a fit holds only
its declared fields; malformed or malicious requests (pickles, object arrays,
wrong schema, stale rounds, replays) are error replies naming the field, and
nothing a site is sent is ever unpickled. Some tests play a curious or
malicious coordinator with the material that crossed the wire, and check that
it learns no single site's statistics.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from conftest import mixture_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from distmix import GaussianMixture
from distmix.engines.local import LocalEngine
from distmix.federated import (
    Federation,
    FederationAbort,
    Site,
    SiteError,
    SiteInvalidRowsError,
    codec,
    crypto,
    secagg,
    shamir,
    wire,
)
from distmix.federated.messages import (
    REQUEST_CONFIG,
    Message,
    RequestError,
    check_message,
    decode_arguments,
    encode_arguments,
    new_nonce,
    task_schema,
)
from distmix.nonfinite import NonFiniteInputError
from distmix.params import Params
from distmix.tasks import TASKS, TaskRefusedError

NAMES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")  # no digits: see the rows test
MODES = ("threshold", "all-or-nothing")
RTOL = 1e-12
ROWS_PER_SITE = 120
SEALED_SHARE_BYTES = 12 + shamir.SHARE_BYTES + 16  # nonce, share, tag


# -- federations -----------------------------------------------------------------
def site_rows(n_sites: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Rows of a seeded mixture, cut into ``n_sites`` sites of equal size."""
    X = mixture_data(seed, n_rows=ROWS_PER_SITE * n_sites) * scale
    return dict(zip(NAMES[:n_sites], np.split(X, n_sites), strict=True))


def federation(
    rows: dict[str, np.ndarray], mode: str = "threshold", threshold: int | None = None, **kwargs
) -> Federation:
    """In-process sites over ``rows`` (threshold ``threshold`` in threshold mode)."""
    sites = [Site(X, name) for name, X in rows.items()]
    if mode == "threshold":
        kwargs["threshold"] = threshold
    return Federation(sites, mode=mode, **kwargs)


def estep_params(X: np.ndarray, k: int = 2, seed: int = 0) -> Params:
    """Full-covariance Params with means at random rows of ``X``."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), size=k, replace=False)]
    covariances = np.stack([np.eye(X.shape[1]) * rng.uniform(1.0, 4.0) for _ in range(k)])
    return Params.from_covariances(rng.dirichlet(np.ones(k)), means, covariances, "full")


def pooled(rows: dict[str, np.ndarray], names: Any, task: str, *args: Any) -> Any:
    """The reference: one local engine over the rows of the sites ``names``."""
    return LocalEngine(np.concatenate([rows[n] for n in names])).reduce(task, *args)


def drop_when(**rules: Callable[[Message], bool]) -> Callable[[str, Message], bool]:
    """A dropout: site ``name`` misses every request for which ``rules[name]`` is true."""
    return lambda name, request: name in rules and bool(rules[name](request))


def kind_is(kind: str, round_id: int | None = None) -> Callable[[Message], bool]:
    """Requests of ``kind`` (in round ``round_id`` only, if given)."""

    def rule(request: Message) -> bool:
        return request.kind == kind and (
            round_id is None or request.config.get("round") == round_id
        )

    return rule


class Recorder:
    """Every reply the coordinator receives, with its request: the egress of all sites."""

    def __init__(self, fed: Federation) -> None:
        self.log: list[tuple[str, Message, Message]] = []
        self.sites = fed.transport.sites
        self.threshold = fed.manifest.mode == "threshold"
        fed.transport.listeners.append(self)

    def __call__(self, site: str, request: Message, reply: Message) -> None:
        self.log.append((site, request, reply))

    def send(self, site: str, request: Message) -> Message:
        """``request`` sent to ``site`` by hand; its reply is logged like any other."""
        reply = self.sites[site].handle(request)
        self.log.append((site, request, reply))
        return reply

    def round_keys(self, sites: Any, to: str) -> tuple[list[bytes], list[bytes]]:
        """``mask_keys`` and ``sealed_keys`` of a hand-built compute request to ``to`` for the
        next round of ``sites``, as the coordinator tracks them from what crossed the wire:
        each site's newest mask public key (its hello's, then its last compute reply's
        ``next_mask_key``) and the share of that key it sealed to ``to`` (its keys reply's,
        then its last compute reply's; none at all in all-or-nothing mode)."""
        publics, sealed = [], []
        for u in sites:
            public, box = None, b""
            for s, q, r in self.log:
                if s != u or "error" in r.config:
                    continue
                if q.kind == "hello":
                    public, box = r.config["mask_key"], b""
                elif q.kind == "keys":
                    roster, shares = q.config["roster"], r.config["sealed"]
                    box = shares[roster.index(to)] if shares and to in roster else b""
                elif q.kind == "compute":
                    routed, shares = q.config["sites"], r.config["sealed_keys"]
                    public = r.config["next_mask_key"]
                    box = shares[routed.index(to)] if shares and to in routed else b""
            assert public is not None, f"no mask key of {u!r} crossed the wire"
            publics.append(public)
            sealed.append(b"" if u == to else box)
        return publics, sealed if self.threshold else []

    def of(self, kind: str, site: str | None = None, round_id: int | None = None) -> list:
        """``(site, request, reply)`` of requests of ``kind`` (to ``site``, in ``round_id``)."""
        return [
            (s, q, r)
            for s, q, r in self.log
            if q.kind == kind
            and (site is None or s == site)
            and (round_id is None or q.config.get("round") == round_id)
        ]

    @property
    def session(self) -> bytes:
        return self.of("hello")[0][1].config["session"]


def compute_request(
    session: bytes,
    round_id: int,
    sites: Any,
    task: str,
    args: tuple,
    *,
    keys: tuple[list[bytes], list[bytes]],
    attempt: int = 0,
    nonce: bytes | None = None,
) -> Message:
    """A compute request as the coordinator writes it (for requests sent by hand); ``keys``
    are its ``mask_keys`` and ``sealed_keys`` (see :meth:`Recorder.round_keys`)."""
    arrays, config = encode_arguments(task, args)
    config.update(
        session=session,
        round=round_id,
        attempt=attempt,
        nonce=nonce if nonce is not None else new_nonce(),
        sites=list(sites),
        mask_keys=list(keys[0]),
        sealed_keys=list(keys[1]),
        task=task,
        task_version=TASKS[task].version,
    )
    return Message("compute", arrays, config)


def unmask_request(
    session: bytes,
    round_id: int,
    survivors: list[str],
    dropped: list[str],
    compute_replies: dict[str, Message],
    sites: list[str],
    to: str,
) -> Message:
    """An unmask request to site ``to``: the survivors' seed shares sealed to it."""
    sealed = [compute_replies[u].config["sealed_seeds"][sites.index(to)] for u in survivors]
    return Message(
        "unmask",
        config={
            "session": session,
            "round": round_id,
            "attempt": 0,
            "nonce": new_nonce(),
            "survivors": list(survivors),
            "dropped": list(dropped),
            "sealed": sealed,
        },
    )


def assert_refused(reply: Message, field: str | None = None, code: str = "refused") -> None:
    """An error reply with ``code`` whose text names ``field``."""
    assert "error" in reply.config, f"the site answered {reply}"
    assert reply.config["code"] == code, reply.config
    assert set(reply.config) == {"error", "code"} and not reply.arrays
    if field is not None:
        assert f"'{field}'" in reply.config["error"], reply.config["error"]


def assert_stats_equal(result: Any, reference: Any) -> None:
    assert result.allclose(reference, rtol=RTOL)
    assert result.n_rows == reference.n_rows


# -- 1. masks look uniform ----------------------------------------------------------
def limb_pvalues(words: np.ndarray) -> np.ndarray:
    """Chi-square p-values ``(L, 2)`` of the top 8 and the low 8 bits of each limb's words."""
    out = []
    for column in words.T:
        top = np.bincount((column >> np.uint64(56)).astype(np.int64), minlength=256)
        low = np.bincount((column & np.uint64(0xFF)).astype(np.int64), minlength=256)
        out.append([chisquare(top).pvalue, chisquare(low).pvalue])
    return np.asarray(out)


@pytest.mark.parametrize("mode", MODES)
def test_masked_words_look_uniform_per_limb_and_the_encoding_does_not(mode):
    """Every limb position of the words one site uploads passes a chi-square test of
    uniformity on its top and low 8 bits (Bonferroni over all tests at 1e-4): the coordinator
    sees noise. The check of the check: the same site's unmasked encoding fails it at every
    limb position (its high limbs are zeros, its top bits sign extensions)."""
    rows = site_rows(3)
    fed = federation(rows, mode)
    recorder = Recorder(fed)
    engine = fed.engine()
    own = LocalEngine(rows["alpha"])
    L, bits = fed.manifest.words_per_value, fed.manifest.digit_bits
    X = np.concatenate(list(rows.values()))
    masked, plain = [], []
    for round_id in range(1, 65):
        params = estep_params(X, k=3, seed=round_id)
        engine.reduce("estep", params)
        ((_, _, reply),) = recorder.of("compute", "alpha", round_id)
        masked.append(reply.arrays["masked"].reshape(-1, L))
        plain.append(codec.encode(wire.values(own.reduce("estep", params)), L, bits))
    masked_words, plain_words = np.concatenate(masked), np.concatenate(plain)
    assert masked_words.shape[0] >= 5 * 256  # enough words for 256 bins per limb
    alpha = 1e-4 / (2 * L)
    p_masked = limb_pvalues(masked_words)
    assert p_masked.min() > alpha, np.argwhere(p_masked <= alpha)
    p_plain = limb_pvalues(plain_words)
    assert np.all(p_plain.min(axis=1) < alpha)


# -- 2. fresh masks every round and attempt -----------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_the_same_statistics_twice_travel_under_unrelated_masks(mode):
    """Asking the same reduce twice (same params, same sites: the same statistics) gives two
    masked vectors from one site that differ in every word, so their difference says nothing
    of the statistics; both sums still decode to the pooled result."""
    rows = site_rows(3)
    fed = federation(rows, mode)
    recorder = Recorder(fed)
    engine = fed.engine()
    params = estep_params(rows["alpha"])
    first = engine.reduce("estep", params)
    second = engine.reduce("estep", params)
    assert_stats_equal(first, pooled(rows, rows, "estep", params))
    assert_stats_equal(second, first)
    (_, _, a), (_, _, b) = recorder.of("compute", "alpha")
    assert np.count_nonzero(a.arrays["masked"] == b.arrays["masked"]) <= 1


def test_a_retried_round_is_masked_afresh():
    """All-or-nothing: with one site missing on attempt 0 the round is tried again; the
    vectors the other sites send on attempt 1 differ in every word from their attempt-0
    vectors (a new key per attempt), and the retried sum is the pooled fit of all sites."""
    rows = site_rows(3)
    fed = federation(
        rows, "all-or-nothing", drop=drop_when(charlie=lambda q: q.config.get("attempt") == 0)
    )
    recorder = Recorder(fed)
    engine = fed.engine()
    params = estep_params(rows["alpha"])
    result = engine.reduce("estep", params)
    assert_stats_equal(result, pooled(rows, rows, "estep", params))
    for name in ("alpha", "bravo"):
        replies = {q.config["attempt"]: r for _, q, r in recorder.of("compute", name)}
        assert sorted(replies) == [0, 1]
        same = replies[0].arrays["masked"] == replies[1].arrays["masked"]
        assert np.count_nonzero(same) <= 1
    assert [q.config["attempt"] for _, q, _ in recorder.of("compute", "charlie")] == [1]


# -- 3. dropouts ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stage", "rules", "in_sum", "in_roster"),
    [
        ("set-up", {"echo": kind_is("hello")}, NAMES[:4], NAMES[:4]),
        ("before upload", {"echo": kind_is("compute", 1)}, NAMES[:4], NAMES[:4]),
        ("after upload", {"echo": kind_is("unmask", 1)}, NAMES[:5], NAMES[:5]),
        (
            "while unmasking",
            {"delta": kind_is("unmask", 1), "echo": kind_is("unmask", 1)},
            NAMES[:5],
            NAMES[:5],
        ),
    ],
)
def test_threshold_dropouts_give_the_exact_sum_of_the_sites_that_uploaded(
    stage, rules, in_sum, in_roster
):
    """Five sites, threshold 3: a site lost at set-up, before upload, after upload, or two
    lost while unmasking. The decoded statistics equal the pooled statistics of exactly the
    sites whose vectors are in the sum (a site that uploaded is in it); a site lost before
    upload is out of the session and gets no request in the next round."""
    rows = site_rows(5)
    fed = federation(rows, "threshold", threshold=3, drop=drop_when(**rules))
    recorder = Recorder(fed)
    engine = fed.engine()
    X = np.concatenate(list(rows.values()))
    p1, p2 = estep_params(X, 3, seed=1), estep_params(X, 3, seed=2)
    assert_stats_equal(engine.reduce("estep", p1), pooled(rows, in_sum, "estep", p1))
    assert engine.sites == in_roster
    if stage == "before upload":
        assert engine.dropped == ["echo"]
    else:  # a site that uploaded stays in the fit
        assert not set(engine.dropped) & set(in_sum)
    second = engine.reduce("estep", p2)
    assert_stats_equal(second, pooled(rows, in_roster, "estep", p2))
    asked = {s for s, _, _ in recorder.of("compute", round_id=2)}
    assert asked == set(in_roster)


@pytest.mark.parametrize(
    ("rules", "missing"),
    [
        ({n: kind_is("hello") for n in NAMES[2:5]}, NAMES[2:5]),
        ({n: kind_is("compute") for n in NAMES[2:5]}, NAMES[2:5]),
        (
            {"echo": kind_is("compute"), "charlie": kind_is("unmask"), "delta": kind_is("unmask")},
            ("charlie", "delta"),
        ),
    ],
    ids=["at set-up", "before upload", "while unmasking"],
)
def test_threshold_fewer_than_t_sites_abort_naming_the_missing(rules, missing):
    """Five sites, threshold 3: when fewer than 3 remain (at set-up, before upload, or with
    one lost before upload and two while unmasking) no sum is released and the abort names
    every missing site."""
    rows = site_rows(5)
    fed = federation(rows, "threshold", threshold=3, drop=drop_when(**rules))
    params = estep_params(rows["alpha"])
    with pytest.raises(FederationAbort) as caught:
        fed.engine().reduce("estep", params)
    for name in missing:
        assert name in str(caught.value)


def test_all_or_nothing_aborts_naming_a_site_missing_every_attempt():
    """All-or-nothing: a site that misses every attempt stops the fit; the abort names it
    and no other site."""
    rows = site_rows(4)
    fed = federation(rows, "all-or-nothing", drop=drop_when(charlie=kind_is("compute")))
    with pytest.raises(FederationAbort, match="'charlie'") as caught:
        fed.engine().reduce("estep", estep_params(rows["alpha"]))
    for name in ("alpha", "bravo", "delta"):
        assert name not in str(caught.value)


# -- 4. never unmasked both ways ----------------------------------------------------
@pytest.fixture
def unfinished_round() -> dict[str, Any]:
    """Four sites, threshold 3, that computed round 1 and never got its unmask request."""
    rows = site_rows(4)
    fed = federation(
        rows, "threshold", threshold=3, drop=drop_when(**{n: kind_is("unmask") for n in NAMES[:4]})
    )
    recorder = Recorder(fed)
    engine = fed.engine()
    with pytest.raises(FederationAbort):
        engine.reduce("estep", estep_params(rows["alpha"]))
    computed = recorder.of("compute", round_id=1)
    return {
        "site": fed.transport.sites["alpha"],
        "session": recorder.session,
        "sites": list(computed[0][1].config["sites"]),
        "replies": {s: r for s, _, r in computed},
    }


def test_a_site_listed_as_survivor_and_dropped_is_refused(unfinished_round):
    """An unmask that lists a site both as a survivor (asking its round seed) and as dropped
    (asking its mask key) would unmask that site alone: refused, naming it."""
    u = unfinished_round
    request = unmask_request(
        u["session"], 1, u["sites"], ["delta"], u["replies"], u["sites"], "alpha"
    )
    reply = u["site"].handle(request)
    assert_refused(reply, "survivors")
    assert "delta" in reply.config["error"]


def test_a_round_is_unmasked_once(unfinished_round):
    """The first unmask of a round is answered (one seed share per survivor, no key share);
    the same unmask again, with a fresh nonce, is refused."""
    u = unfinished_round
    sites = u["sites"]
    first = u["site"].handle(
        unmask_request(u["session"], 1, sites, [], u["replies"], sites, "alpha")
    )
    assert "error" not in first.config
    assert len(first.config["seed_shares"]) == 4 and first.config["key_shares"] == []
    again = u["site"].handle(
        unmask_request(u["session"], 1, sites, [], u["replies"], sites, "alpha")
    )
    assert_refused(again, "round")


def test_no_key_share_of_a_site_whose_seed_share_was_given(unfinished_round):
    """Two requests: the first reveals every survivor's seed share, delta's included; the
    second asks for delta's mask-key share as if delta had dropped out. Both together would
    unmask delta's vector: the second is refused and carries no share."""
    u = unfinished_round
    sites = u["sites"]
    first = u["site"].handle(
        unmask_request(u["session"], 1, sites, [], u["replies"], sites, "alpha")
    )
    assert "error" not in first.config
    survivors = [s for s in sites if s != "delta"]
    second = u["site"].handle(
        unmask_request(u["session"], 1, survivors, ["delta"], u["replies"], sites, "alpha")
    )
    assert_refused(second)
    assert "key_shares" not in second.config


def recover_vector(
    masked: np.ndarray,
    seed: bytes,
    private: bytes,
    target: str,
    peers: list[str],
    roster: list[str],
    publics: dict[str, bytes],
    *,
    salt: bytes,
    session: bytes,
    round_id: int,
) -> np.ndarray:
    """What a coordinator holding ``target``'s round seed and mask key computes: its own
    encoded words, every mask removed."""
    words = masked - secagg.self_mask(seed, masked.size)
    keys = crypto.KeyPair(private)
    for peer in peers:
        key = secagg.pair_key(
            keys,
            publics[peer],
            salt=salt,
            session=session,
            round_id=round_id,
            attempt=0,
            names=(target, peer),
        )
        stream = crypto.keystream_words(key, masked.size)
        if roster.index(target) < roster.index(peer):
            words = words - stream
        else:
            words = words + stream
    return words


def test_a_later_dropout_does_not_unmask_the_dropped_sites_earlier_rounds():
    """Four sites, threshold 3, an honest EM sequence: round 1 with every site (so delta's
    round-1 seed is reconstructed to remove its self mask), then delta drops out before
    uploading round 2 (so its mask key for round 2 is reconstructed to remove its pairwise
    masks). The coordinator then holds delta's round-1 vector, round-1 seed and round-2 mask
    key, and every public key that crossed the wire: it must still not be able to recover
    delta's round-1 statistics (the mask key given up must not open past rounds in which the
    site's seed was revealed). The check of the check: the same arithmetic with delta's
    round-1 key (which only delta holds) does recover them."""
    rows = site_rows(4)
    fed = federation(rows, "threshold", threshold=3, drop=drop_when(delta=kind_is("compute", 2)))
    recorder = Recorder(fed)
    engine = fed.engine()
    X = np.concatenate(list(rows.values()))
    p1, p2 = estep_params(X, 2, seed=1), estep_params(X, 2, seed=2)
    engine.reduce("estep", p1)
    try:
        engine.reduce("estep", p2)
    except SiteError as error:  # the sites kept delta's mask key: nothing more crossed the wire
        assert error.code == "refused"
        return
    manifest, roster = fed.manifest, list(fed.manifest.sites)
    point = {s: roster.index(s) + 1 for s in roster}
    t = manifest.threshold
    ((_, compute1, reply1),) = recorder.of("compute", "delta", 1)
    compute2 = recorder.of("compute", "alpha", 2)[0][1]
    unmask1 = recorder.of("unmask", round_id=1)
    unmask2 = recorder.of("unmask", round_id=2)
    survivors1 = unmask1[0][1].config["survivors"]
    dropped2 = unmask2[0][1].config["dropped"]
    assert dropped2 == ["delta"]
    seed = shamir.combine(
        {point[s]: r.config["seed_shares"][survivors1.index("delta")] for s, _, r in unmask1},
        t,
        32,
    )
    private = shamir.combine({point[s]: r.config["key_shares"][0] for s, _, r in unmask2}, t, 32)
    # every mask public key that crossed the wire, as the round-1 and round-2 requests carry
    # them (round 1's are the hello replies'); the reconstruction is delta's round-2 key
    publics = {
        r: dict(zip(q.config["sites"], q.config["mask_keys"], strict=True))
        for r, q in ((1, compute1), (2, compute2))
    }
    assert publics[1] == {s: r.config["mask_key"] for s, _, r in recorder.of("hello")}
    assert crypto.KeyPair(private).public == publics[2]["delta"] != publics[1]["delta"]
    peers = [s for s in compute1.config["sites"] if s != "delta"]
    own = wire.values(LocalEngine(rows["delta"]).reduce("estep", p1))

    def recovered(private: bytes, publics: dict[str, bytes]) -> np.ndarray:
        words = recover_vector(
            reply1.arrays["masked"],
            seed,
            private,
            "delta",
            peers,
            roster,
            publics,
            salt=manifest.digest,
            session=recorder.session,
            round_id=1,
        )
        return codec.decode(words.reshape(-1, manifest.words_per_value), manifest.digit_bits)

    # the check of the check: delta's round-1 key (never sent, never shared out) opens it
    round1_keys = fed.transport.sites["delta"]._mask_keys
    assert round1_keys.public == publics[1]["delta"]
    np.testing.assert_allclose(recovered(round1_keys.private_bytes, publics[1]), own, rtol=1e-9)
    for r in (1, 2):  # the peers' keys of round 1 (those of the masks), and of round 2
        values = recovered(private, publics[r])
        assert not np.allclose(values, own, rtol=1e-9), (
            "the coordinator recovered site 'delta''s round-1 statistics (its n_rows: "
            f"{values[-2]:g}) from the material of an ordinary dropout (round-{r} keys)"
        )


@pytest.mark.parametrize("threshold", [3, 4])
def test_a_split_view_of_the_survivors_cannot_unmask_one_site(threshold):
    """Six sites. A malicious coordinator tells some sites that every site survived (asking
    foxtrot's seed shares) and the others that foxtrot dropped (asking foxtrot's mask-key
    shares), then asks every site the other way too. Together they must not give up both
    secrets of foxtrot: the manifest refuses a threshold that is not a strict majority (3 of
    6), and with 4 of 6 each site answers only the first way it is asked, so two disjoint
    groups (at most 6 shares, foxtrot's own only a seed share) never reach 4 shares of both
    kinds, for every split of the sites."""
    rows = site_rows(6)
    drop = drop_when(**{n: kind_is("unmask") for n in rows})
    try:
        fed = federation(rows, "threshold", threshold=threshold, drop=drop)
    except ValueError as error:  # the manifest refuses a threshold this low
        assert "threshold" in str(error)
        return
    m = fed.manifest
    roster = list(m.sites)
    point = {s: roster.index(s) + 1 for s in roster}
    others = [s for s in roster if s != "foxtrot"]
    splits = [c for size in range(len(others) + 1) for c in itertools.combinations(others, size)]
    for i, told_all_survived in enumerate(splits):
        # a new session each time (a round is unmasked once), and a new request each time
        # (the sites' ledgers outlive sessions: the same request is never summed over
        # another site set, which would stop the attack before the rule tested here)
        params = estep_params(rows["alpha"], seed=i)
        own = wire.values(LocalEngine(rows["foxtrot"]).reduce("estep", params))
        recorder = Recorder(fed)
        with pytest.raises(FederationAbort):
            fed.engine().reduce("estep", params)
        computed = recorder.of("compute", round_id=1)
        sites = list(computed[0][1].config["sites"])
        replies = {s: r for s, _, r in computed}
        session = recorder.session

        # (name, True): every site survived, foxtrot's seed share asked; (name, False):
        # foxtrot dropped, its mask-key share asked
        views = {(n, True): unmask_request(session, 1, sites, [], replies, sites, n) for n in sites}
        views |= {
            (n, False): unmask_request(session, 1, others, ["foxtrot"], replies, sites, n)
            for n in others
        }
        first_seed = ["foxtrot", *told_all_survived]
        first_key = [s for s in others if s not in told_all_survived]
        order = [(n, True) for n in first_seed] + [(n, False) for n in first_key]
        order += [(n, False) for n in told_all_survived] + [(n, True) for n in first_key]
        answers = {(n, way): fed.transport.sites[n].handle(views[n, way]) for n, way in order}
        given = {k: a for k, a in answers.items() if "error" not in a.config}
        fed.transport.listeners.remove(recorder)
        # each site answers the first way it is asked (each view is consistent) ...
        assert all((n, True) in given for n in first_seed)
        assert all((n, False) in given for n in first_key)
        for name in others:  # ... and never the other way too
            assert not ((name, True) in given and (name, False) in given), name
        seeds = [n for n, way in given if way]
        keys = [n for n, way in given if not way]
        if len(seeds) >= threshold and len(keys) >= threshold:
            seed = shamir.combine(
                {
                    point[s]: given[s, True].config["seed_shares"][sites.index("foxtrot")]
                    for s in seeds
                },
                threshold,
                32,
            )
            private = shamir.combine(
                {point[s]: given[s, False].config["key_shares"][0] for s in keys},
                threshold,
                32,
            )
            words = recover_vector(
                replies["foxtrot"].arrays["masked"],
                seed,
                private,
                "foxtrot",
                others,
                roster,
                dict(zip(sites, computed[0][1].config["mask_keys"], strict=True)),
                salt=m.digest,
                session=session,
                round_id=1,
            )
            recovered = codec.decode(words.reshape(-1, m.words_per_value), m.digit_bits)
            assert not np.allclose(recovered, own, rtol=1e-9), (
                f"a split view of the survivors ({first_seed} told all survived) "
                "unmasked site 'foxtrot' alone"
            )
        assert min(len(seeds), len(keys)) < threshold, (first_seed, seeds, keys)


# -- 5. the ledger --------------------------------------------------------------------
def test_a_request_is_not_reaggregated_over_fewer_sites_threshold():
    """Threshold mode: round 1 sums a request over four sites; round 2 asks the same request
    (same task and params) and delta drops before upload. Unmasking the three others would
    give the coordinator delta's statistics as a difference: the sites refuse, naming the
    field 'sites'. The same dropout with new params is fine."""
    rows = site_rows(4)
    fed = federation(
        rows,
        "threshold",
        threshold=3,
        drop=drop_when(delta=lambda q: q.kind == "compute" and q.config["round"] >= 2),
    )
    engine = fed.engine()
    X = np.concatenate(list(rows.values()))
    p1, p2 = estep_params(X, seed=1), estep_params(X, seed=2)
    engine.reduce("estep", p1)
    with pytest.raises(SiteError, match="'sites'") as caught:
        engine.reduce("estep", p1)
    assert caught.value.code == "refused"
    assert "reveal the difference" in str(caught.value)
    assert_stats_equal(engine.reduce("estep", p2), pooled(rows, NAMES[:3], "estep", p2))


def test_a_request_is_not_reaggregated_over_fewer_sites_all_or_nothing():
    """All-or-nothing: the ledger is kept at compute time. A compute request sent by hand over
    four sites is answered; the same arrays and task over three sites are refused, naming
    'sites'; new params over three sites are answered."""
    rows = site_rows(4)
    fed = federation(rows, "all-or-nothing")
    recorder = Recorder(fed)
    fed.engine()
    session = recorder.session
    p1, p2 = estep_params(rows["alpha"], seed=1), estep_params(rows["alpha"], seed=2)
    four, three = NAMES[:4], NAMES[:3]

    def send(round_id: int, sites: tuple[str, ...], params: Params) -> Message:
        keys = recorder.round_keys(sites, "alpha")
        return recorder.send(
            "alpha", compute_request(session, round_id, sites, "estep", (params,), keys=keys)
        )

    assert "error" not in send(1, four, p1).config
    assert_refused(send(2, three, p1), "sites")
    assert "error" not in send(3, three, p2).config


def test_a_personalised_request_is_not_reaggregated_under_other_weights():
    """Personalised weights: each site runs the E-step with its own mixing weights, so the
    weights a request carries change nothing a site computes. The same shared components
    asked again with other request weights, over the sites without delta, are the same
    request: the sites must refuse it (or their sum must not differ from the first by
    exactly delta's statistics)."""
    rows = site_rows(4)
    fed = federation(
        rows,
        "threshold",
        threshold=3,
        personal_weights=True,
        drop=drop_when(delta=kind_is("compute", 2)),
    )
    engine = fed.engine()
    params = estep_params(np.concatenate(list(rows.values())), k=3, seed=1)
    other = Params(
        params.covariance_type,
        np.roll(params.weights, 1),
        params.means,
        params.covariances,
        params.precisions_cholesky,
    )
    assert not np.array_equal(other.weights, params.weights)
    four = engine.reduce("estep", params)
    try:
        three = engine.reduce("estep", other)
    except SiteError as error:
        assert error.code == "refused"
        return
    leaked = wire.values(four) - wire.values(three)
    own = wire.values(LocalEngine(rows["delta"]).reduce("estep", params))
    assert not np.allclose(leaked, own, rtol=1e-9, atol=1e-9), (
        f"the difference of two sums is site 'delta''s statistics ({leaked[-2]:g} rows)"
    )


def test_the_difference_of_two_sums_of_one_request_is_one_sites_statistics():
    """Why the ledger exists: exact sums of the same request over {A, B, C, D} and {A, B, C}
    differ by exactly D's statistics (the secure-sum words, modulo 2**64, bit for bit; the
    pooled float sums to rounding; D's row count exactly)."""
    rows = site_rows(4)
    fed = federation(rows)
    L, bits = fed.manifest.words_per_value, fed.manifest.digit_bits
    params = estep_params(rows["alpha"])

    def words(name: str) -> np.ndarray:
        return codec.encode(wire.values(LocalEngine(rows[name]).reduce("estep", params)), L, bits)

    four = words("alpha") + words("bravo") + words("charlie") + words("delta")
    three = words("alpha") + words("bravo") + words("charlie")
    np.testing.assert_array_equal(four - three, words("delta"))
    leaked = codec.decode(four - three, bits)
    own = wire.values(LocalEngine(rows["delta"]).reduce("estep", params))
    np.testing.assert_array_equal(leaked, own)
    big = pooled(rows, NAMES[:4], "estep", params)
    small = pooled(rows, NAMES[:3], "estep", params)
    difference = wire.values(big) - wire.values(small)
    np.testing.assert_allclose(difference, own, rtol=1e-9, atol=1e-9)
    assert big.n_rows - small.n_rows == ROWS_PER_SITE


# -- 6. no sum over fewer than three sites -----------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_no_sum_over_two_of_three_sites(mode):
    """Three sites, one lost before upload: the round aborts, naming it (a sum of two sites
    is one site's statistics to the other); a compute request listing two sites is refused
    by the site, naming 'sites'."""
    rows = site_rows(3)
    fed = federation(rows, mode, drop=drop_when(charlie=kind_is("compute")))
    recorder = Recorder(fed)
    engine = fed.engine()
    params = estep_params(rows["alpha"])
    with pytest.raises(FederationAbort, match="charlie"):
        engine.reduce("estep", params)
    site = fed.transport.sites["alpha"]
    two = ["alpha", "bravo"]
    keys = recorder.round_keys(two, "alpha")
    request = compute_request(recorder.session, 10, two, "estep", (params,), keys=keys)
    assert_refused(site.handle(request), "sites")


# -- 7. egress audit --------------------------------------------------------------------
def check_sealed(sealed: Any, sites: list[str], site: str) -> None:
    """One sealed share of a fixed size to each of ``sites``, none (b"") to ``site`` itself."""
    assert type(sealed) is list and len(sealed) == len(sites)
    for name, box in zip(sites, sealed, strict=True):
        assert type(box) is bytes
        assert len(box) == (0 if name == site else SEALED_SHARE_BYTES)


def check_reply(site: str, request: Message, reply: Message, fed: Federation) -> None:
    """``reply`` holds exactly the declared fields of its kind, and nothing else."""
    manifest = fed.manifest
    threshold = manifest.mode == "threshold"
    assert reply.kind == request.kind and "error" not in reply.config, reply.config
    assert all(a.dtype == np.uint64 for a in reply.arrays.values())  # never a float
    c = reply.config
    if request.kind == "identify":  # public: who the site is and what it accepted
        assert not reply.arrays and c == {"site": site, "manifest": manifest.digest}
    elif request.kind == "hello":
        assert not reply.arrays and set(c) == {"mask_key", "share_key"}
        assert all(type(c[k]) is bytes and len(c[k]) == 32 for k in c)
    elif request.kind == "keys":
        assert not reply.arrays and set(c) == {"sealed"}
        check_sealed(c["sealed"], request.config["roster"] if threshold else [], site)
    elif request.kind == "compute":
        task, args = decode_arguments(request, manifest)
        like = wire.template(task, manifest.n_features, args)
        n_values = sum(s.size for s in wire.slots(task, like))
        assert set(reply.arrays) == {"masked"}
        assert reply.arrays["masked"].shape == (n_values * manifest.words_per_value,)
        sites = request.config["sites"]
        key = c["next_mask_key"]
        assert type(key) is bytes and len(key) == 32
        if threshold:
            assert set(c) == {"next_mask_key", "sealed_keys", "sealed_seeds"}
            check_sealed(c["sealed_keys"], sites, site)
            check_sealed(c["sealed_seeds"], sites, site)
        else:
            assert set(c) == {"next_mask_key", "sealed_keys"} and c["sealed_keys"] == []
    elif request.kind == "unmask":
        assert threshold and not reply.arrays
        assert set(c) == {"seed_shares", "key_shares"}
        assert len(c["seed_shares"]) == len(request.config["survivors"])
        assert len(c["key_shares"]) == len(request.config["dropped"])
        shares = c["seed_shares"] + c["key_shares"]
        assert all(type(b) is bytes and len(b) == shamir.SHARE_BYTES for b in shares)
    else:
        raise AssertionError(f"a site answered a {request.kind!r} request")


@pytest.mark.parametrize(
    ("mode", "personal"),
    [("threshold", False), ("all-or-nothing", False), ("threshold", True)],
    ids=["threshold", "all-or-nothing", "personal weights"],
)
def test_every_reply_of_a_fit_holds_only_its_declared_fields(mode, personal):
    """A whole fit (moments init, 5 EM iterations; also with personalised weights, which
    stay at the sites), then an identify request: every reply each site sends holds exactly
    the fields its kind declares (its name and manifest digest, 32-byte keys, sealed shares
    of their fixed size, one uint64 vector of the declared length), no float array and no
    error."""
    rows = site_rows(3)
    fed = federation(rows, mode, personal_weights=personal)
    recorder = Recorder(fed)
    gm = GaussianMixture(n_components=2, init_params="moments", random_state=0, max_iter=5)
    gm.fit(fed)
    kinds = {q.kind for _, q, _ in recorder.log}
    assert {"hello", "keys", "compute"} <= kinds
    assert ("unmask" in kinds) == (mode == "threshold")
    assert len({q.config["task"] for _, q, _ in recorder.of("compute")}) >= 2
    for site, request, reply in recorder.log:
        check_reply(site, request, reply, fed)
    for name, site in fed.transport.sites.items():
        check_reply(name, Message("identify"), site.handle(Message("identify")), fed)


@pytest.mark.parametrize(
    ("task", "arrays", "config"),
    [
        ("take_rows", {"indices": np.arange(5.0)}, {}),
        (
            "kmeans_sample",
            {"centers": np.zeros((2, 3)), "shift": np.zeros(3)},
            {"phi": 1.0, "oversampling": 2.0, "seed": 0, "stream": 0},
        ),
        ("predict", {}, {}),
    ],
)
def test_a_site_refuses_requests_for_rows(task, arrays, config):
    """A compute request for a task whose result is rows or per-row outputs is refused by the
    site itself, naming the field 'task' (a second lock behind the coordinator's)."""
    rows = site_rows(3)
    fed = federation(rows)
    recorder = Recorder(fed)
    fed.engine()
    site = fed.transport.sites["alpha"]
    if task == "predict":
        arrays, config = encode_arguments("estep", (estep_params(rows["alpha"]),))
    keys = recorder.round_keys(NAMES[:3], "alpha")
    request = Message(
        "compute",
        dict(arrays),
        {
            **config,
            "session": recorder.session,
            "round": 1,
            "attempt": 0,
            "nonce": new_nonce(),
            "sites": list(NAMES[:3]),
            "mask_keys": keys[0],
            "sealed_keys": keys[1],
            "task": task,
            "task_version": TASKS[task].version,
        },
    )
    reply = site.handle(request)
    assert_refused(reply, "task")


def test_the_engine_refuses_tasks_that_move_rows():
    """The coordinator refuses row-moving and per-row tasks before any request is sent."""
    rows = site_rows(3)
    fed = federation(rows)
    engine = fed.engine()
    sent = dict(fed.transport.delivered)
    with pytest.raises(TaskRefusedError, match="take_rows"):
        engine.reduce("take_rows", np.arange(3))
    with pytest.raises(TaskRefusedError, match="kmeans_sample"):
        engine.reduce("kmeans_sample", np.zeros((2, 3)), np.zeros(3), 1.0, 2.0, 0, 0)
    with pytest.raises(TaskRefusedError, match="predict"):
        engine.map_blocks("predict", estep_params(rows["alpha"]))
    assert dict(fed.transport.delivered) == sent


# -- 8. schema fuzzing, with a canary ------------------------------------------------
class Canary:
    """Creates the file ``path`` when unpickled (proof that nothing a site is sent is)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


class Bench:
    """Three sites with a session set up, and hand-built requests to one of them (each valid
    one for the next round, with the mask keys the coordinator tracks)."""

    def __init__(self, canary_path: str, mode: str = "threshold") -> None:
        self.rows = site_rows(3)
        self.fed = federation(self.rows, mode)
        self.recorder = Recorder(self.fed)
        self.engine = self.fed.engine()
        self.site = self.fed.transport.sites["alpha"]
        self.session = self.recorder.session
        self.params = estep_params(self.rows["alpha"])
        self.canary_path = canary_path
        self.canary = Canary(canary_path)
        self.blob = pickle.dumps(self.canary)
        self.rounds: Iterator[int] = itertools.count(1)
        self.round = 0

    def compute(self, round_id: int | None = None, **config: Any) -> Message:
        """A valid compute request for the next round; ``config`` replaces fields."""
        if round_id is None:
            self.round = round_id = next(self.rounds)
        keys = self.recorder.round_keys(NAMES[:3], "alpha")
        request = compute_request(
            self.session, round_id, NAMES[:3], "estep", (self.params,), keys=keys
        )
        request.config.update(config)
        return request

    def accepted(self, request: Message) -> Message:
        reply = self.recorder.send("alpha", request)
        assert "error" not in reply.config, reply.config
        return reply


@pytest.fixture
def bench(tmp_path) -> Iterator[Bench]:
    bench = Bench(str(tmp_path / "canary"))
    yield bench
    assert not os.path.exists(bench.canary_path), "a request was unpickled"


def test_the_canary_is_live(tmp_path):
    """The check of the check: unpickling the canary's bytes does create its file."""
    path = tmp_path / "canary"
    blob = pickle.dumps(Canary(str(path)))
    with pickle.loads(blob):
        pass
    assert path.exists()


def with_array(request: Message, name: str, value: Any) -> Message:
    request.arrays[name] = value
    return request


def without(request: Message, name: str) -> Message:
    request.arrays.pop(name, None)
    request.config.pop(name, None)
    return request


def stale_round(b: Bench) -> Message:
    b.accepted(b.compute())
    b.accepted(b.compute())
    return b.compute(round_id=b.round - 1)


def replayed_nonce(b: Bench) -> Message:
    nonce = new_nonce()
    b.accepted(b.compute(nonce=nonce))
    return b.compute(nonce=nonce)


def nan_means(b: Bench) -> Message:
    request = b.compute()
    request.arrays["means"] = request.arrays["means"].copy()
    request.arrays["means"][1, 2] = np.nan
    return request


def canary_seed_shares(b: Bench) -> Message:
    """An unmask request for the round alpha just computed, the canary's pickle as every
    seed share sealed to it."""
    b.accepted(b.compute())
    config = {
        "session": b.session,
        "round": b.round,
        "attempt": 0,
        "nonce": new_nonce(),
        "survivors": list(NAMES[:3]),
        "dropped": [],
        "sealed": [b.blob] * 3,
    }
    return Message("unmask", config=config)


def hello(b: Bench, **config: Any) -> Message:
    return Message(
        "hello", config={"session": os.urandom(16), "manifest": b.fed.manifest.digest, **config}
    )


MALFORMED: dict[str, tuple[Callable[[Bench], Any], str | None]] = {
    "object array holding the canary": (
        lambda b: with_array(b.compute(), "means", np.array([[b.canary] * 3] * 2, dtype=object)),
        "means",
    ),
    "extra object array": (
        lambda b: with_array(b.compute(), "payload", np.array([b.canary], dtype=object)),
        "payload",
    ),
    "pickled canary as the nonce": (lambda b: b.compute(nonce=b.blob), "nonce"),
    "pickled canary as the session": (lambda b: b.compute(session=b.blob), "session"),
    "pickled canary as an extra field": (lambda b: b.compute(payload=b.blob), "payload"),
    "pickled canary as a sealed key share": (
        lambda b: b.compute(sealed_keys=[b"", b.blob, b.blob]),
        "sealed_keys",
    ),
    "pickled canary as a sealed seed share": (canary_seed_shares, "sealed"),
    "pickled canary as a mask key": (lambda b: b.compute(mask_keys=[b.blob] * 3), "mask_keys"),
    "pickled canary as the manifest": (lambda b: hello(b, manifest=b.blob), "manifest"),
    "the canary itself as the task": (lambda b: b.compute(task=b.canary), "task"),
    "the canary in the site list": (lambda b: b.compute(sites=[b.canary]), "sites"),
    "the canary as the message": (lambda b: b.canary, None),
    "a dict as the message": (lambda b: {"kind": "compute", "config": {}}, None),
    "extra config field": (lambda b: b.compute(verbose=True), "verbose"),
    "extra array": (
        lambda b: with_array(b.compute(), "indices", np.arange(4, dtype=np.float64)),
        "indices",
    ),
    "missing nonce": (lambda b: without(b.compute(), "nonce"), "nonce"),
    "missing weights": (lambda b: without(b.compute(), "weights"), "weights"),
    "float32 means": (
        lambda b: with_array(b.compute(), "means", b.params.means.astype(np.float32)),
        "means",
    ),
    "int64 means": (
        lambda b: with_array(b.compute(), "means", b.params.means.astype(np.int64)),
        "means",
    ),
    "uint64 means": (
        lambda b: with_array(b.compute(), "means", np.abs(b.params.means).astype(np.uint64)),
        "means",
    ),
    "wrong shape of the means": (
        lambda b: with_array(b.compute(), "means", np.zeros((2, 4))),
        "means",
    ),
    "wrong shape of the weights": (
        lambda b: with_array(b.compute(), "weights", np.full(3, 1 / 3)),
        "weights",
    ),
    "NaN in the means": (nan_means, "means"),
    "bool as the round": (lambda b: b.compute(round=True), "round"),
    "round beyond 64 bits": (lambda b: b.compute(round=2**64), "round"),
    "attempt beyond 32 bits": (lambda b: b.compute(attempt=2**32), "attempt"),
    "unknown covariance type": (lambda b: b.compute(covariance_type="banded"), "covariance_type"),
    "unknown task": (lambda b: b.compute(task="exfiltrate"), "task"),
    "unknown kind": (lambda b: Message("exec", config={"code": "import os"}), "kind"),
    "stale round": (stale_round, "round"),
    "replayed nonce": (replayed_nonce, "nonce"),
    "wrong session": (lambda b: b.compute(session=os.urandom(16)), "session"),
    "wrong manifest digest in hello": (
        lambda b: hello(b, manifest=bytes(32)),
        "manifest",
    ),
    "short session in hello": (lambda b: hello(b, session=b"x"), "session"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_an_error_reply_naming_the_field(bench, case):
    """Each malformed or malicious request (pickles, object arrays, the canary object,
    missing or extra fields, wrong dtypes and shapes, NaN, unknown task, stale round,
    replayed nonce, wrong session or manifest) is an error reply naming the field;
    ``Site.handle`` never raises, nothing is unpickled (the canary file never appears), and
    the site still answers a valid request afterwards (its session is intact)."""
    build, field = MALFORMED[case]
    request = build(bench)
    reply = bench.site.handle(request)
    assert isinstance(reply, Message)
    assert "error" in reply.config and not reply.arrays, reply
    if field is not None:
        assert_refused(reply, field)
    bench.accepted(bench.compute())


def test_an_out_of_range_round_does_not_end_the_session(bench):
    """A round number beyond 64 bits is an int (it passes the type check) but no round: the
    site must refuse it without moving its round counter, so the next ordinary round of the
    session is still answered."""
    bench.accepted(bench.compute())
    reply = bench.site.handle(bench.compute(round_id=2**64))
    assert "error" in reply.config
    bench.accepted(bench.compute())


def test_the_transport_refuses_what_a_site_would(bench):
    """``check_message`` (both sides of every transport) refuses object arrays and
    non-plain config values, naming the field, before a site sees them."""
    request = with_array(bench.compute(), "means", np.array([bench.canary], dtype=object))
    with pytest.raises(RequestError, match="'means'"):
        check_message(request)
    with pytest.raises(RequestError, match="'task'"):
        check_message(bench.compute(task=bench.canary))
    with pytest.raises(RequestError, match="'sites'"):
        check_message(bench.compute(sites=["alpha", b"bravo"]))


# -- property: random requests ----------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_bench(tmp_path_factory) -> Iterator[Bench]:
    bench = Bench(str(tmp_path_factory.mktemp("fuzz") / "canary"))
    yield bench
    assert not os.path.exists(bench.canary_path), "a request was unpickled"


ARRAYS, CONFIG = task_schema("estep")
FIELDS = sorted(set(CONFIG) | ARRAYS)
_plain = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=40),
)
_names = st.one_of(st.sampled_from(FIELDS + ["payload", "error", "kind"]), st.text(max_size=6))
_dtypes = st.sampled_from(["<f8", ">f8", "<f4", "<i8", "<u8", "<c16", "?", "O"])
_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def any_array(draw: Any, canary: Canary) -> np.ndarray:
    dtype, shape = draw(_dtypes), draw(_shapes)
    if dtype == "O":
        return np.full(shape, canary, dtype=object)
    values = draw(st.floats(0.0, 1e3))
    out = np.full(shape, values).astype(dtype)
    if out.size and draw(st.booleans()) and out.dtype.kind in "fc":
        out.flat[0] = np.nan
    return out


def any_value(canary: Canary) -> st.SearchStrategy:
    return st.one_of(
        _plain,
        st.lists(_plain, max_size=4),
        st.none(),
        st.just(canary),
        st.just(pickle.dumps(canary)),
        st.dictionaries(st.text(max_size=3), _plain, max_size=2),
    )


SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.data())
def test_random_requests_never_raise_and_are_refused(fuzz_bench, data):
    """Random kinds, config values (plain, lists, None, dicts, the canary, its pickle) and
    arrays (any dtype, shape, NaN, object arrays of the canary): ``Site.handle`` never raises,
    and every reply is an error (no random request holds the session's secrets)."""
    b = fuzz_bench
    kind = data.draw(st.one_of(st.sampled_from([*REQUEST_CONFIG, "exec"]), st.text(max_size=6)))
    config = data.draw(st.dictionaries(_names, any_value(b.canary), max_size=8))
    arrays = data.draw(st.dictionaries(_names, any_array(b.canary), max_size=4))
    reply = b.site.handle(Message(kind, arrays, config))
    assert isinstance(reply, Message)
    if kind == "identify" and not config and not arrays:  # the one request without secrets
        check_reply("alpha", Message(kind), reply, b.fed)
    else:
        assert set(reply.config) == {"error", "code"} and not reply.arrays
    assert not os.path.exists(b.canary_path)


@st.composite
def mutations(draw: Any, canary: Canary) -> tuple:
    """One change that makes a valid estep compute request malformed."""
    kind = draw(
        st.sampled_from(
            [
                "drop",
                "extra",
                "extra_array",
                "retype",
                "dtype",
                "shape",
                "nonfinite",
                "value",
                "key",
            ]
        )
    )
    if kind == "key":  # a byte of a mask key (any site's) or of a peer's sealed key share
        name = draw(st.sampled_from(["mask_keys", "sealed_keys"]))
        index = draw(st.integers(0 if name == "mask_keys" else 1, 2))  # alpha's own share: b""
        return (kind, name, index, draw(st.integers(0, 10**6)))
    if kind == "drop":
        return (kind, draw(st.sampled_from(FIELDS)))
    if kind == "extra":
        name = draw(_names.filter(lambda n: n not in CONFIG and n not in ARRAYS))
        return (kind, name, draw(any_value(canary)))
    if kind == "extra_array":
        name = draw(_names.filter(lambda n: n not in ARRAYS and n not in CONFIG))
        return (kind, name, draw(any_array(canary)))
    if kind == "retype":
        name = draw(st.sampled_from(sorted(CONFIG)))
        value = draw(any_value(canary).filter(lambda v, t=CONFIG[name]: type(v) is not t))
        return (kind, name, value)
    if kind == "dtype":
        dtype = draw(st.sampled_from([">f8", "<f4", "<i8", "<u8", "<c16", "O"]))
        return (kind, draw(st.sampled_from(sorted(ARRAYS))), dtype)
    if kind == "shape":
        return (kind, draw(st.sampled_from(sorted(ARRAYS))), draw(_shapes))
    if kind == "nonfinite":
        name = draw(st.sampled_from(sorted(ARRAYS)))
        return (kind, name, draw(st.integers(0, 17)), draw(st.sampled_from([np.nan, np.inf])))
    field, value = draw(
        st.one_of(
            st.tuples(st.just("session"), st.binary(min_size=16, max_size=16)),
            st.tuples(st.just("nonce"), st.binary(max_size=40).filter(lambda v: len(v) != 16)),
            st.tuples(st.just("task"), st.text(max_size=12).filter(lambda v: v not in TASKS)),
            st.tuples(st.just("task_version"), st.integers().filter(lambda v: v != 1)),
            st.tuples(st.just("covariance_type"), st.sampled_from(["", "FULL", "banded"])),
            st.tuples(st.just("round"), st.integers(-5, 0)),  # not after the last round
            st.tuples(st.just("attempt"), st.integers(-5, -1)),
            st.tuples(
                st.just("sites"),
                st.sampled_from(
                    [
                        [],
                        ["alpha", "bravo"],
                        ["alpha", "alpha", "bravo"],
                        ["bravo", "charlie"],
                        ["alpha", "bravo", "zulu"],
                        ["alpha", "bravo", "delta"],
                    ]
                ),
            ),
        )
    )
    return ("value", field, value)


def mutate(b: Bench, request: Message, change: tuple) -> Message:
    kind, name, *rest = change
    original = encode_arguments("estep", (b.params,))[0]
    if kind == "drop":
        without(request, name)
    elif kind in ("extra", "retype", "value"):
        value = rest[0]
        if kind == "value" and name == "round":
            value = b.round - 1 + value  # at or before the last round this site computed
        request.config[name] = value
    elif kind == "extra_array":
        request.arrays[name] = rest[0]
    elif kind == "dtype":
        dtype = rest[0]
        value = original[name]
        request.arrays[name] = (
            np.full(value.shape, b.canary, dtype=object) if dtype == "O" else value.astype(dtype)
        )
    elif kind == "shape":
        if rest[0] == original[name].shape:
            request.arrays[name] = np.zeros(rest[0] + (1,))
        else:
            request.arrays[name] = np.ones(rest[0])
    elif kind == "nonfinite":
        value = original[name].copy()
        value.flat[rest[0] % value.size] = rest[1]
        request.arrays[name] = value
    elif kind == "key":  # one bit of the valid entry flipped (twice is still once)
        index, position = rest
        keys = b.recorder.round_keys(NAMES[:3], "alpha")
        entry = bytearray(keys[0 if name == "mask_keys" else 1][index])
        entry[position % len(entry)] ^= 0x01
        entries = request.config.get(name)
        if isinstance(entries, list) and index < len(entries):
            request.config[name] = [*entries[:index], bytes(entry), *entries[index + 1 :]]
    return request


@SETTINGS
@given(data=st.data())
def test_a_mutated_compute_request_is_never_answered(fuzz_bench, data):
    """Any one to three changes that make a valid compute request malformed (a field missing,
    added or of another type, an array of another dtype or shape or holding NaN/inf, a
    wrong session, nonce, task, version, covariance type, stale round or site list, a
    mask key or sealed key share altered) give an error reply, never a masked vector; the
    valid request is answered right after."""
    b = fuzz_bench
    changes = data.draw(st.lists(mutations(b.canary), min_size=1, max_size=3))
    request = b.compute()
    b.accepted(request)
    malformed = b.compute()
    for change in changes:
        mutate(b, malformed, change)
    reply = b.site.handle(malformed)
    assert set(reply.config) == {"error", "code"} and not reply.arrays, (changes, reply)
    assert not os.path.exists(b.canary_path)


# -- 9. invalid rows ----------------------------------------------------------------
def test_a_site_with_nan_rows_stops_the_fit_without_saying_which():
    """A site holding NaN and infinite rows stops the fit with SiteInvalidRowsError (a
    NonFiniteInputError) that names the site and holds no row index or count (no digit)."""
    rows = site_rows(3)
    bad = rows["bravo"].copy()
    bad[17, 1] = np.nan
    bad[42, 0] = np.inf
    rows["bravo"] = bad
    fed = federation(rows)
    gm = GaussianMixture(n_components=2, init_params="moments", random_state=0, max_iter=5)
    with pytest.raises(SiteInvalidRowsError) as caught:
        gm.fit(fed)
    assert isinstance(caught.value, NonFiniteInputError)
    assert caught.value.site == "bravo" and "'bravo'" in str(caught.value)
    assert re.search(r"\d", str(caught.value)) is None, str(caught.value)


# -- 10. out of bounds ----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_value_beyond_the_manifest_bound_names_the_field_not_the_value(mode):
    """With a radius of 1 and data of scale 100, the sites refuse to encode their sums: the
    reduce raises SiteError with code "bound" naming the site and the field, and the message
    holds no number but the bound's exponent (nothing from the data)."""
    rows = site_rows(3, scale=25.0)
    assert np.abs(np.concatenate(list(rows.values()))).max() > 100
    fed = federation(rows, mode, radius=1.0)
    engine = fed.engine()
    params = estep_params(np.zeros((4, 3)) + 0.5)
    with pytest.raises(SiteError) as caught:
        engine.reduce("estep", params)
    error, text = caught.value, str(caught.value)
    assert error.code == "bound" and error.site in rows
    fields = re.findall(r"field '(\w+)'", text)
    assert fields and fields[0] in ("x_sum", "second", "log_lik")
    exponents = {str(fed.manifest.bound_exponent(k)) for k in ("weight", "first", "second")}
    assert set(re.findall(r"\d+", text)) <= {"2"} | exponents, text
    assert re.search(r"\d\.\d", text) is None
