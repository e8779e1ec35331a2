"""TokenVerifier remembers tokens it verified (no second signature check), never the deny list's answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from servicekit.auth import RevocationList, TokenVerifier
from servicekit.errors import Unauthorized


class Keys:
    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self.keys = keys

    async def get(self, kid: str) -> Ed25519PublicKey | None:
        return self.keys.get(kid)


class DenyList(RevocationList):
    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked = 0

    async def is_revoked(self, jti: str, session_id: str | None) -> bool:
        self.asked += 1
        return jti in self.revoked or (session_id is not None and session_id in self.revoked)


def _token(private: Ed25519PrivateKey, *, lifetime: int = 60, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "sid": uuid.uuid4().hex,
        "iat": now,
        "exp": now + lifetime,
        "aud": "aud",
        "iss": "auth",
        **claims,
    }
    return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": "k1"})


def _verifier(keys: Keys, deny: DenyList, *, leeway: int = 0) -> TokenVerifier:
    return TokenVerifier(keys, deny, audience="aud", issuer="auth", leeway_seconds=leeway)


async def test_a_remembered_token_is_still_refused_once_revoked() -> None:
    private = Ed25519PrivateKey.generate()
    deny = DenyList()
    verifier = _verifier(Keys({"k1": private.public_key()}), deny)
    token = _token(private)
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first and deny.asked == 2  # asked on every request
    deny.revoked.add(first.jti)
    with pytest.raises(Unauthorized, match="token revoked"):
        await verifier.verify(token)
    deny.revoked = {str(first.session_id)}
    with pytest.raises(Unauthorized, match="token revoked"):
        await verifier.verify(token)


async def test_a_remembered_token_fails_once_its_key_is_withdrawn_or_replaced() -> None:
    private = Ed25519PrivateKey.generate()
    keys = Keys({"k1": private.public_key()})
    verifier = _verifier(keys, DenyList())
    token = _token(private)
    await verifier.verify(token)
    keys.keys = {}
    with pytest.raises(Unauthorized, match="unknown key"):
        await verifier.verify(token)
    keys.keys = {"k1": Ed25519PrivateKey.generate().public_key()}  # same kid, another key
    with pytest.raises(Unauthorized, match="invalid token"):
        await verifier.verify(token)


async def test_a_remembered_token_expires_as_an_unremembered_one_does() -> None:
    private = Ed25519PrivateKey.generate()
    verifier = _verifier(Keys({"k1": private.public_key()}), DenyList())
    token = _token(private, lifetime=1)
    verified = await verifier.verify(token)
    await asyncio.sleep(max(0.0, verified.expires_at - time.time()) + 0.05)
    with pytest.raises(Unauthorized, match="token expired"):
        await verifier.verify(token)
