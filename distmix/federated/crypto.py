"""The cryptographic primitives of secure sums, all from ``cryptography``.

Layer: ``cryptography`` and NumPy only.

* key agreement: X25519, the shared secret run through HKDF-SHA256 with a
  salt (the federation manifest's digest) and an ``info`` that names the
  purpose, the session, the round and the attempt, so no key is used twice;
* masks: the ChaCha20 keystream of such a key, read as uint64 words (never a
  NumPy generator: its output is predictable from a few words);
* sealed shares: ChaCha20-Poly1305 with a random 96-bit nonce in front of the
  ciphertext and the routing (who to whom, which round) as associated data, so
  the coordinator that carries a share can neither read nor redirect it.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NONCE = bytes(16)  # ChaCha20's counter and nonce: every key is fresh (HKDF info)
_RAW = serialization.Encoding.Raw


class KeyPair:
    """An X25519 key pair; ``public`` is the 32 raw bytes that are sent."""

    def __init__(self, private: bytes | None = None) -> None:
        self._private = (
            X25519PrivateKey.generate()
            if private is None
            else X25519PrivateKey.from_private_bytes(private)
        )
        self.public = self._private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @property
    def private_bytes(self) -> bytes:
        """The raw private key (to be secret-shared, never sent in the clear)."""
        return self._private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def agree(self, peer_public: bytes, *, salt: bytes, info: bytes) -> bytes:
        """A 32-byte key shared with the owner of ``peer_public`` for ``info``."""
        if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
            raise ValueError("an X25519 public key is 32 bytes.")
        shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        return derive(shared, salt=salt, info=info)


def derive(secret: bytes, *, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of ``secret``: a 32-byte key for one purpose (``info``)."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def keystream_words(key: bytes, n_words: int) -> np.ndarray:
    """``n_words`` uint64 words of the ChaCha20 keystream of ``key`` (a mask)."""
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * int(n_words)))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def random_key() -> bytes:
    return os.urandom(KEY_BYTES)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305: a random nonce, then the ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`seal`; raises ``ValueError`` if it was altered or misrouted."""
    if not isinstance(sealed, bytes) or len(sealed) < 28:
        raise ValueError("a sealed share is at least 28 bytes.")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], associated)
    except InvalidTag:
        raise ValueError("a sealed share failed authentication (altered or misrouted).") from None
