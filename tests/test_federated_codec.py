"""The exact fixed-point codec of secure sums, Shamir sharing, keystreams and the manifest.

The codec's promise: every float64 within its bound round-trips exactly, the
sum of up to ``max_sites`` encoded vectors (added modulo 2**64, as masked
vectors are) decodes to the correctly rounded exact sum — ``math.fsum`` — in
any order, even with every site at its bound; NaN, infinity and values beyond
a bound are refused naming the field, never the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distmix.federated import codec, crypto, shamir
from distmix.federated.codec import BoundError, Field
from distmix.federated.manifest import FIELD_KINDS, Manifest

BITS = codec.digit_bits(1024)  # 53
BOUND = 60
WORDS = codec.words_per_value(BOUND, BITS)

in_bound = st.floats(
    min_value=-(2.0**BOUND), max_value=2.0**BOUND, allow_nan=False, allow_infinity=False
)


@settings(max_examples=300, deadline=None)
@given(st.lists(in_bound, min_size=1, max_size=40))
def test_every_in_bound_float_round_trips_exactly(values):
    x = np.asarray(values)
    words = codec.encode(x, WORDS, BITS)
    assert words.dtype == np.uint64 and words.shape == (x.size, WORDS)
    back = codec.decode(words, BITS)
    # bit for bit (-0.0 reads back as 0.0: equal as numbers, and sums are what matter)
    np.testing.assert_array_equal(back, x)
    exact = codec.exact_integers(words, BITS)
    assert exact == [int(Fraction(v) * 2**codec.SCALE_BITS) for v in values]


def test_extreme_values_round_trip():
    """Subnormals, the smallest and largest normals in bound, both signs, powers of two."""
    tiny = np.nextafter(0.0, 1.0)
    values = np.array(
        [0.0, tiny, -tiny, 2.2250738585072014e-308, -1e-310, 2.0**BOUND, -(2.0**BOUND), 1.5, -3.0]
        + [2.0**e for e in range(-1074, BOUND + 1, 37)]
    )
    np.testing.assert_array_equal(codec.decode(codec.encode(values, WORDS, BITS), BITS), values)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(in_bound, min_size=4, max_size=4), min_size=1, max_size=12),
    st.randoms(use_true_random=False),
)
def test_sums_decode_to_fsum_in_any_order(sites, rng):
    """The decoded sum of encoded vectors is math.fsum of the values, whatever the order."""
    encoded = [codec.encode(np.asarray(s), WORDS, BITS) for s in sites]
    order = list(range(len(encoded)))
    rng.shuffle(order)
    total = np.zeros_like(encoded[0])
    for i in order:
        total += encoded[i]  # modulo 2**64, as masked vectors add
    want = [math.fsum(column) for column in zip(*sites, strict=True)]
    np.testing.assert_array_equal(codec.decode(total, BITS), np.asarray(want))


@pytest.mark.parametrize("max_sites", [3, 5, 1024, 2**20])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_most_sites_all_at_their_bound_never_wrap(max_sites, sign):
    """``max_sites`` vectors all at ±2**bound (and at the largest value below it) sum exactly:
    the digits' sums stay within int64, so no carry is lost."""
    bits = codec.digit_bits(max_sites)
    words = codec.words_per_value(BOUND, bits)
    values = sign * np.array([2.0**BOUND, np.nextafter(2.0**BOUND, 0.0), 2.0 ** (BOUND - 1)])
    one = codec.encode(values, words, bits)
    # adding max_sites copies word by word is max_sites * words (mod 2**64)
    total = (one * np.uint64(max_sites)).astype(np.uint64)
    exact = codec.exact_integers(total, bits)
    assert exact == [max_sites * int(Fraction(v) * 2**codec.SCALE_BITS) for v in values]
    np.testing.assert_array_equal(codec.decode(total, bits), values * max_sites)
    # one more digit bit would let the same sum wrap: the sizing is tight, not lucky
    signed = total.view(np.int64)
    assert np.max(np.abs(signed.astype(np.float64))) < 2.0**63


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0 ** (BOUND + 1), -(2.0**61)])
def test_out_of_bound_and_nonfinite_values_are_refused_naming_the_field(bad):
    fields = [Field("resp_sum", 2, BOUND), Field("x_sum", 3, BOUND)]
    values = np.array([1.0, 2.0, 3.0, bad, 5.0])
    with pytest.raises(BoundError, match="'x_sum'") as caught:
        codec.check_bounds(values, fields, "site 'a'")
    assert "site 'a'" in str(caught.value)
    if math.isfinite(bad):
        assert repr(bad) not in str(caught.value) and f"{bad:g}" not in str(caught.value)
    with pytest.raises(BoundError):
        codec.encode(np.array([bad]), codec.words_per_value(BOUND, BITS) - 1, BITS)


def test_a_value_too_large_for_its_words_is_refused_by_encode_too():
    with pytest.raises(BoundError, match="more than"):
        codec.encode(np.array([2.0**300]), WORDS, BITS)


def test_digit_bits_bound_the_number_of_summands():
    assert codec.digit_bits(1) == 63
    assert codec.digit_bits(1024) == 53 and codec.digit_bits(1025) == 52
    with pytest.raises(ValueError):
        codec.digit_bits(0)


# --------------------------------------------------------------------------- #
# Shamir, keystreams, sealing                                                 #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("n", "t"), [(3, 3), (5, 3), (7, 4)])
def test_any_t_shares_recover_the_secret_and_fewer_do_not(n, t):
    secret = os.urandom(32)
    shares = shamir.split(secret, range(1, n + 1), t)
    rng = random.Random(n * 10 + t)
    for _ in range(5):
        chosen = rng.sample(sorted(shares), t)
        assert shamir.combine({x: shares[x] for x in chosen}, t, 32) == secret
    with pytest.raises(ValueError):
        shamir.combine({x: shares[x] for x in sorted(shares)[: t - 1]}, t, 32)
    # t-1 shares plus a forged one give something else (not the secret)
    forged = dict(list(shares.items())[: t - 1])
    forged[n + 5] = os.urandom(shamir.SHARE_BYTES - 1).rjust(shamir.SHARE_BYTES, b"\0")
    try:
        assert shamir.combine(forged, t, 32) != secret
    except ValueError:
        pass  # or it recovers no 32-byte secret at all


def test_shares_at_the_roster_points():
    secret = os.urandom(32)
    shares = shamir.split(secret, [2, 5, 9, 11], 3)
    assert set(shares) == {2, 5, 9, 11}
    assert shamir.combine({x: shares[x] for x in (5, 9, 11)}, 3, 32) == secret
    with pytest.raises(ValueError):
        shamir.split(secret, [1, 1, 2], 2)


def test_keystreams_are_keyed_and_pair_keys_agree():
    a, b, c = crypto.KeyPair(), crypto.KeyPair(), crypto.KeyPair()
    k_ab = a.agree(b.public, salt=b"m", info=b"round 1")
    assert k_ab == b.agree(a.public, salt=b"m", info=b"round 1")
    assert k_ab != a.agree(c.public, salt=b"m", info=b"round 1")
    assert k_ab != a.agree(b.public, salt=b"m", info=b"round 2")
    assert k_ab != a.agree(b.public, salt=b"other manifest", info=b"round 1")
    s1, s2 = crypto.keystream_words(k_ab, 1000), crypto.keystream_words(k_ab, 1000)
    np.testing.assert_array_equal(s1, s2)
    other = crypto.keystream_words(a.agree(b.public, salt=b"m", info=b"round 2"), 1000)
    assert np.count_nonzero(s1 == other) < 3


def test_sealed_shares_open_only_for_their_route():
    key = crypto.random_key()
    box = crypto.seal(key, b"share", b"a->b round 1")
    assert crypto.unseal(key, box, b"a->b round 1") == b"share"
    with pytest.raises(ValueError, match="authentication"):
        crypto.unseal(key, box, b"a->c round 1")
    with pytest.raises(ValueError, match="authentication"):
        crypto.unseal(key, box[:-1] + bytes([box[-1] ^ 1]), b"a->b round 1")


# --------------------------------------------------------------------------- #
# the manifest                                                                #
# --------------------------------------------------------------------------- #
def test_manifest_round_trips_and_its_digest_names_every_field():
    m = Manifest(sites=("a", "b", "c"), n_features=4, max_rows_per_site=1000, radius=50.0)
    again = Manifest.from_json(m.to_json())
    assert again == m and again.digest == m.digest
    for change in ({"radius": 51.0}, {"max_sites": 512}, {"sites": ("a", "b", "d")}):
        other = dataclasses.replace(m, **change)
        assert other.digest != m.digest, change
    assert m.threshold == 3


def test_manifest_bounds_hold_the_statistics_they_name():
    """``first`` ≥ N·W·2R and ``second`` ≥ N·W·(2R)², each a power of two."""
    m = Manifest(sites=("a", "b", "c"), n_features=2, max_rows_per_site=1000, radius=3.0)
    assert 2.0 ** m.bound_exponent("count") >= 1000
    assert 2.0 ** m.bound_exponent("first") >= 1000 * 6.0
    assert 2.0 ** m.bound_exponent("second") >= 1000 * 36.0
    assert 2.0 ** (m.bound_exponent("second") - 1) < 1000 * 36.0
    assert m.words_per_value == codec.words_per_value(
        max(m.bound_exponent(k) for k in FIELD_KINDS), m.digit_bits
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sites": ("a", "b")}, "at least 3 sites"),
        ({"sites": ("a", "a", "b")}, "distinct"),
        ({"radius": 0.0}, "radius"),
        ({"radius": float("inf")}, "radius"),
        ({"mode": "best-effort"}, "mode"),
        ({"threshold": 2}, "threshold"),
        ({"threshold": 4}, "threshold"),
        ({"centre": (0.0, 1.0, 2.0)}, "centre"),
        ({"max_rows_per_site": 0}, "max_rows_per_site"),
    ],
)
def test_bad_manifests_are_refused_naming_the_field(change, message):
    base = {"sites": ("a", "b", "c"), "n_features": 2, "max_rows_per_site": 100}
    with pytest.raises(ValueError, match=message):
        Manifest(**{**base, **change})
