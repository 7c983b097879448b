"""Masks of a secure sum, on both sides: what a site adds, what the coordinator removes.

Layer: the primitives of :mod:`~distmix.federated.crypto` and
:mod:`~distmix.federated.shamir`; nothing of messages or transports.

The protocol follows Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017, over exact fixed-point words
(:mod:`~distmix.federated.codec`) added modulo ``2**64``:

* Each site ``u`` of a session has a *mask key* pair ``s_u`` and a *share key*
  pair ``c_u`` (X25519). For each round and attempt, ``u`` and every other
  site ``v`` of the round derive the same pairwise key from ``s_u``, ``s_v``
  (HKDF, the manifest digest as salt, the session, round, attempt and the two
  names as info); the lower of the two in the roster adds its ChaCha20
  keystream, the higher subtracts it, so the pairwise masks cancel in the sum.
* Threshold mode adds a *self mask*: the keystream of a fresh 32-byte seed
  ``b_u`` per round and attempt. At setup every site Shamir-shares its mask
  private key, and every round its ``b_u``, t of n, each share sealed to its
  recipient (ChaCha20-Poly1305 under a key agreed from the share keys). To
  unmask, the survivors give the shares of every survivor's ``b_u`` and of
  every dropped site's mask key, never both for one site: the coordinator
  removes the survivors' self masks and the dropped sites' pairwise masks
  and holds the survivors' exact sum, and nothing else.
* All-or-nothing mode has pairwise masks only: one exchange per round, and a
  missing site leaves the others' masks in the sum (the round is retried).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from distmix.federated import crypto

SHARED_SECRET_BYTES = crypto.KEY_BYTES


def _info(purpose: str, session: bytes, *parts: bytes) -> bytes:
    return b"distmix/1|" + purpose.encode() + b"|" + session + b"|" + b"|".join(parts)


def round_tag(round_id: int, attempt: int) -> bytes:
    return struct.pack(">QI", int(round_id), int(attempt))


def pair_key(
    keys: crypto.KeyPair,
    peer_public: bytes,
    *,
    salt: bytes,
    session: bytes,
    round_id: int,
    attempt: int,
    names: tuple[str, str],
) -> bytes:
    """The key ``u`` and ``v`` share for one round and attempt (the same on both sides)."""
    low, high = sorted(names)
    info = _info("mask", session, round_tag(round_id, attempt), low.encode(), high.encode())
    return keys.agree(peer_public, salt=salt, info=info)


def pairwise_masks(
    me: str,
    keys: crypto.KeyPair,
    peers: Mapping[str, bytes],
    roster: Sequence[str],
    *,
    salt: bytes,
    session: bytes,
    round_id: int,
    attempt: int,
    n_words: int,
) -> np.ndarray:
    """``Σ_v ± PRG(k_uv)`` over the round's other sites ``peers`` (name → mask public key):
    plus where ``me`` comes first in ``roster``, minus where it comes second."""
    total = np.zeros(n_words, dtype=np.uint64)
    mine = roster.index(me)
    for name, public in peers.items():
        if name == me:
            continue
        key = pair_key(
            keys,
            public,
            salt=salt,
            session=session,
            round_id=round_id,
            attempt=attempt,
            names=(me, name),
        )
        stream = crypto.keystream_words(key, n_words)
        if mine < roster.index(name):
            total += stream
        else:
            total -= stream
    return total


def self_mask(seed: bytes, n_words: int) -> np.ndarray:
    """The keystream of a round's self-mask seed."""
    return crypto.keystream_words(seed, n_words)


def share_key(
    keys: crypto.KeyPair,
    peer_public: bytes,
    *,
    salt: bytes,
    session: bytes,
    sender: str,
    recipient: str,
) -> bytes:
    """The key that seals shares from ``sender`` to ``recipient`` in a session."""
    low, high = sorted((sender, recipient))
    return keys.agree(
        peer_public, salt=salt, info=_info("share", session, low.encode(), high.encode())
    )


def share_aad(session: bytes, what: str, sender: str, recipient: str, tag: bytes = b"") -> bytes:
    """Associated data of a sealed share: what it is a share of, from whom, to whom, when."""
    return _info("sealed-" + what, session, sender.encode(), recipient.encode(), tag)
