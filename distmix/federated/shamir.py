"""Shamir secret sharing, t of n, over the prime field of ``2**521 − 1``.

Layer: the standard library only.

A secret of at most 64 bytes is the constant term of a random polynomial of
degree ``t − 1`` over GF(p), ``p = 2**521 − 1`` (a Mersenne prime, larger than
any 64-byte secret); a share is the polynomial at a nonzero point ``x`` (a
site's 1-based place in the roster).
Any ``t`` shares give the secret back by Lagrange interpolation at 0; fewer
say nothing about it (Shamir, "How to share a secret", CACM 22(11), 1979).
Coefficients come from :mod:`secrets`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # 521 bits
MAX_SECRET_BYTES = 64


def split(secret: bytes, xs: Sequence[int], t: int) -> dict[int, bytes]:
    """Shares of ``secret`` at the distinct points ``xs`` (positive), any ``t`` of which
    recover it: ``{x: share}``."""
    points = [int(x) for x in xs]
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("Shamir share points must be distinct positive integers.")
    if not 1 <= t <= len(points):
        raise ValueError(f"a t-of-n sharing needs 1 <= t <= n, got t={t}, n={len(points)}.")
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"a secret holds at most {MAX_SECRET_BYTES} bytes, got {len(secret)}.")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], t: int, secret_bytes: int) -> bytes:
    """The secret of ``secret_bytes`` bytes from at least ``t`` shares ``{x: share}``."""
    if len(shares) < t:
        raise ValueError(f"{len(shares)} shares cannot recover a secret shared {t} of n.")
    points = [(int(x), int.from_bytes(y, "big")) for x, y in sorted(shares.items())[:t]]
    if any(not 0 < x < PRIME for x, _ in points) or any(
        len(y) != SHARE_BYTES for y in shares.values()
    ):
        raise ValueError("malformed Shamir share.")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * secret_bytes):
        raise ValueError("the shares do not recover a secret of the expected size.")
    return secret.to_bytes(secret_bytes, "big")
