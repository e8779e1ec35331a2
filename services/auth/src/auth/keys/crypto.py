"""Secrets derived from AUTH_KEY_ENCRYPTION_KEY: AES-GCM for private keys at rest, HMAC for reset codes.

Each purpose gets its own HKDF-derived key, so one secret never serves two algorithms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT_V1 = b"\x01"  # ciphertext layout: version byte | 12-byte nonce | AES-GCM(raw private key)


def derive_key(secret: str, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"auth/{purpose}".encode()).derive(
        secret.encode()
    )


class KeyDecryptionError(Exception):
    """The stored private key does not decrypt: AUTH_KEY_ENCRYPTION_KEY differs from the one that wrote it."""


class KeyCipher:
    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive_key(secret, "signing-keys/v1"))

    def encrypt(self, kid: str, key: Ed25519PrivateKey) -> bytes:
        nonce = os.urandom(12)
        # The kid is authenticated data: a ciphertext cannot be swapped onto another key's row.
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, key.private_bytes_raw(), kid.encode())

    def decrypt(self, kid: str, blob: bytes) -> Ed25519PrivateKey:
        if blob[:1] != _FORMAT_V1:
            raise KeyDecryptionError(f"signing key {kid}: unknown ciphertext format")
        try:
            raw = self._aead.decrypt(blob[1:13], blob[13:], kid.encode())
        except InvalidTag:
            raise KeyDecryptionError(
                f"signing key {kid} does not decrypt with this key-encryption key"
            ) from None
        return Ed25519PrivateKey.from_private_bytes(raw)


class CodeHasher:
    """HMAC of reset codes: a short numeric code cannot be brute-forced from a database dump."""

    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "reset-codes/v1")

    def digest(self, reset_id: bytes, code: str) -> bytes:
        return hmac.new(self._key, reset_id + code.encode(), hashlib.sha256).digest()

    def matches(self, reset_id: bytes, code: str, expected: bytes) -> bool:
        return hmac.compare_digest(self.digest(reset_id, code), expected)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The public JWK with its RFC 7638 thumbprint as `kid`."""
    x = _b64url(key.public_bytes_raw())
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}
