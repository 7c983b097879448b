"""Exact fixed-point encoding of float64 statistics for secure sums.

Layer: pure NumPy and the standard library; it knows nothing of sites, masks
or engines.

A float64 ``x`` with ``|x| ≤ 2**e`` is the integer ``v = x · 2**1074`` (every
float64, subnormals included, is an integer multiple of ``2**-1074``), and
``|v| < 2**(e + 1075)``. That integer is written in ``L`` signed digits of
``d`` bits, one per 64-bit word: ``v = Σ_j D_j · 2**(d·j)`` with all digits of
the sign of ``v`` and ``|D_j| < 2**d``. Words are added modulo ``2**64`` (which
is what masking needs); as long as at most ``2**(63 − d)`` vectors are added,
every word's sum stays within ``(−2**63, 2**63)``, so reading the summed words
as int64 gives the exact sums of the digits, with no carry lost. Decoding
carries them in Python integers and divides by ``2**1074`` once: the result
is the exact sum of the encoded floats, correctly rounded (CPython's
``int / int`` is correctly rounded), i.e. what :func:`math.fsum` returns for
the same values, in any order.

Every value is checked before it is encoded: NaN, infinity and values beyond
their field's bound are refused with an error that names the field, never the
value (:class:`BoundError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: ``2**-SCALE_BITS`` is the smallest positive float64 (subnormal)
SCALE_BITS = 1074
_MANTISSA_BITS = 53


class BoundError(ValueError):
    """A value cannot be encoded: not finite, or beyond its field's public bound."""


def digit_bits(max_summands: int) -> int:
    """Bits per digit so that ``max_summands`` encoded vectors add without a carry lost."""
    if int(max_summands) < 1:
        raise ValueError(f"max_summands must be at least 1, got {max_summands}.")
    bits = 63 - math.ceil(math.log2(int(max_summands)))
    if bits < 27:
        raise ValueError(
            f"max_summands={max_summands} leaves {bits} bits per 64-bit word; at most "
            f"{2**36:,} vectors can be summed."
        )
    return bits


def words_per_value(bound_exponent: int, bits: int) -> int:
    """Digits (64-bit words) of a value of magnitude at most ``2**bound_exponent``."""
    if not -SCALE_BITS <= int(bound_exponent) <= 1023:
        raise ValueError(f"a bound exponent must be in [-1074, 1023], got {bound_exponent}.")
    return -(-(int(bound_exponent) + SCALE_BITS + 1) // bits)


@dataclass(frozen=True)
class Field:
    """A named run of values in a flat vector and the exponent of its public bound."""

    name: str
    size: int
    bound_exponent: int


def check_bounds(values: np.ndarray, fields: Sequence[Field], who: str = "") -> None:
    """Raise :class:`BoundError` naming the first field holding a non-finite value or a
    value beyond ``2**bound_exponent`` (never the value itself)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (sum(f.size for f in fields),):
        raise ValueError(
            f"{values.size} values for fields of {sum(f.size for f in fields)} values."
        )
    start = 0
    prefix = f"{who}: " if who else ""
    for field in fields:
        part = values[start : start + field.size]
        start += field.size
        if not np.all(np.isfinite(part)):
            raise BoundError(f"{prefix}field {field.name!r} holds NaN or infinity.")
        if part.size and np.max(np.abs(part)) > math.ldexp(1.0, field.bound_exponent):
            raise BoundError(
                f"{prefix}field {field.name!r} exceeds its bound 2**{field.bound_exponent} "
                "of the federation manifest (widen the manifest's bounds: more rows per "
                "site, a larger radius or log-density bound)."
            )


def encode(values: np.ndarray, n_words: int, bits: int) -> np.ndarray:
    """Fixed-point words ``(n, n_words)`` uint64 of ``n`` finite float64 values.

    The caller checks the bounds first (:func:`check_bounds`); a value too large
    for ``n_words`` digits raises :class:`BoundError` all the same.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise BoundError("cannot encode NaN or infinity.")
    mant, expo = np.frexp(np.abs(x))  # |x| = mant · 2**expo, mant in [0.5, 1) or 0
    m = np.ldexp(mant, _MANTISSA_BITS).astype(np.uint64)  # exact: 53-bit integers
    shift = expo.astype(np.int64) - _MANTISSA_BITS + SCALE_BITS
    # subnormals: the integer mantissa has trailing zeros, so shifting right is exact
    low = shift < 0
    m = np.where(low, m >> np.where(low, -shift, 0).astype(np.uint64), m)
    shift = np.maximum(shift, 0)
    first = shift // bits  # the word holding the value's lowest bit
    offset = (shift % bits).astype(np.uint64)
    if np.any(
        (m > 0) & (first + (_MANTISSA_BITS + offset.astype(np.int64) - 1) // bits >= n_words)
    ):
        raise BoundError(f"a value needs more than {n_words} words of {bits} bits.")
    mask = np.uint64((1 << bits) - 1)
    b = np.uint64(bits)
    digits = [
        (m << offset) & mask,
        (m >> (b - offset)) & mask,
        m >> np.minimum(2 * b - offset, np.uint64(63)),
    ]
    out = np.zeros((x.size, n_words), dtype=np.int64)
    rows = np.arange(x.size)
    sign = np.where(x < 0, -1, 1)
    for j, digit in enumerate(digits):
        col = first + j
        ok = (col < n_words) & (digit > 0)
        out[rows[ok], col[ok]] = sign[ok] * digit[ok].astype(np.int64)
    return out.view(np.uint64)


def _normalised(signed: np.ndarray, bits: int) -> np.ndarray:
    """The same integers with every digit but the top one in ``[0, 2**bits)`` (int64).

    Digit sums of at most ``2**(63 − bits)`` vectors are below ``2**63`` in
    magnitude, and a carry below ``2**(63 − bits)``, so no step overflows.
    """
    digits = signed.copy()
    for j in range(digits.shape[1] - 1):
        carry = digits[:, j] >> bits  # floor division: the low digit becomes non-negative
        digits[:, j] -= carry << bits
        digits[:, j + 1] += carry
    return digits


def decode(words: np.ndarray, bits: int) -> np.ndarray:
    """The float64 values of summed words ``(n, L)`` uint64 (the exact sums, rounded once).

    Carries are propagated in NumPy; then each value is rounded from its top
    three digits (at least ``2·bits + 1 ≥ 107`` significant bits) and a sticky
    bit for anything below them, which decides every rounding as the whole
    integer would (CPython's ``int / int`` rounds correctly, subnormals too).
    """
    words = np.asarray(words, dtype=np.uint64)
    if words.ndim != 2:
        raise ValueError(f"encoded words must be (n, L), got shape {words.shape}.")
    n, n_words = words.shape
    digits = _normalised(words.view(np.int64), bits)
    negative = digits[:, -1] < 0
    if np.any(negative):  # the magnitude of a negative value, normalised again
        digits[negative] = _normalised(-digits[negative], bits)
    nonzero = digits != 0
    top = n_words - 1 - np.argmax(nonzero[:, ::-1], axis=1)  # highest nonzero digit
    padded = np.concatenate([np.zeros((n, 2), dtype=np.int64), digits], axis=1)
    rows = np.arange(n)
    high, mid, low = (padded[rows, top + 2 - i] for i in range(3))
    # anything below the three digits kept: a sticky bit
    below = np.concatenate([np.zeros((n, 1), dtype=bool), np.cumsum(nonzero, axis=1) > 0], axis=1)
    sticky = below[rows, np.maximum(top - 2, 0)] & (top >= 2)
    exponents = bits * (top - 2) - 1 - SCALE_BITS
    out = np.zeros(n, dtype=np.float64)
    for i in np.flatnonzero(nonzero.any(axis=1)).tolist():
        m = (int(high[i]) << (2 * bits)) | (int(mid[i]) << bits) | int(low[i])
        m = (m << 1) | int(sticky[i])
        e = int(exponents[i])
        value = float(m << e) if e >= 0 else m / (1 << -e)
        out[i] = -value if negative[i] else value
    return out


def exact_integers(words: np.ndarray, bits: int) -> list[int]:
    """The integers ``v = Σ_j D_j 2**(d·j)`` the rows of summed ``words`` hold (tests)."""
    signed = np.asarray(words, dtype=np.uint64).view(np.int64)
    weights = [1 << (bits * j) for j in range(signed.shape[1])]
    return [sum(d * w for d, w in zip(row, weights, strict=True)) for row in signed.tolist()]
