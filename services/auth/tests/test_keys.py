"""Signing keys: encrypted at rest, kept across restarts, rotated with the old public key still published."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from auth_testkit import KEY_ENCRYPTION_KEY, Secrets, login, new_login
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from auth.keys import repository as signing_keys
from auth.keys.crypto import KeyCipher, KeyDecryptionError
from auth.keys.service import Keyring
from auth.models import SigningKey
from servicekit.db import make_engine
from testsupport import HttpService, recreate_database, run_migrations, wait_until


async def jwks(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await http.get("/auth/.well-known/jwks.json")
    assert r.status_code == 200
    keys: list[dict[str, Any]] = r.json()["keys"]
    return keys


async def test_jwks_publishes_only_public_ed25519_keys(http: httpx.AsyncClient) -> None:
    for key in await jwks(http):
        assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")


async def test_private_keys_are_encrypted_at_rest(engine: AsyncEngine, auth_service: HttpService) -> None:
    async with async_sessionmaker(engine)() as session:
        rows = (await session.scalars(select(SigningKey))).all()
    assert rows
    for row in rows:
        private = KeyCipher(KEY_ENCRYPTION_KEY).decrypt(row.kid, row.private_key_ciphertext)
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        assert raw not in row.private_key_ciphertext
        with pytest.raises(KeyDecryptionError):
            KeyCipher("another-key-encryption-key-of-sufficient-length").decrypt(
                row.kid, row.private_key_ciphertext
            )
        with pytest.raises(KeyDecryptionError):  # the kid is authenticated: rows cannot swap ciphertexts
            KeyCipher(KEY_ENCRYPTION_KEY).decrypt("other-kid", row.private_key_ciphertext)


async def test_restart_keeps_the_keys_and_the_tokens_valid(
    http: httpx.AsyncClient, auth_service: HttpService, seen: Secrets
) -> None:
    session = await new_login(http, seen)
    before = await jwks(http)
    # Blocking process control off the loop: the verifier app shares this event loop.
    await asyncio.to_thread(auth_service.terminate)
    await asyncio.to_thread(auth_service.start)
    assert await jwks(http) == before
    assert (await http.get("/auth/api/me", headers=session.bearer)).status_code == 200


async def test_rotation_keeps_the_previous_key_until_its_tokens_expire(
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    auth_env: dict[str, str],
    engine: AsyncEngine,
    seen: Secrets,
) -> None:
    session = await new_login(http, seen)
    old_kid = jwt.get_unverified_header(session.access_token)["kid"]

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth.keys",
        "rotate",
        env={**os.environ, **auth_env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = (b.decode() for b in await proc.communicate())
    assert proc.returncode == 0, stderr
    new_kid = stdout.strip().rsplit(" ", 1)[-1]
    assert new_kid and new_kid != old_kid
    assert KEY_ENCRYPTION_KEY not in stdout + stderr

    async def both_published() -> bool:
        return {k["kid"] for k in await jwks(http)} == {old_kid, new_kid}

    await wait_until(both_published, timeout=10, what="old and new key in the JWKS")

    # Tokens signed with the retired key still pass, at auth and at the other service.
    assert (await http.get("/auth/api/me", headers=session.bearer)).status_code == 200
    assert (await verifier.get("/whoami", headers=session.bearer)).status_code == 200

    access, _ = await login(http, seen, session.email, session.password)
    assert jwt.get_unverified_header(access)["kid"] == new_kid

    async def verifier_accepts_new_kid() -> bool:  # an unknown kid makes it refetch the JWKS
        r = await verifier.get("/whoami", headers={"Authorization": f"Bearer {access}"})
        return r.status_code == 200

    await wait_until(verifier_accepts_new_kid, timeout=10, what="verifier learning the new key")

    async with async_sessionmaker(engine)() as db:
        old = await db.get(SigningKey, old_kid)
        assert old is not None and old.retired_at is not None and old.publish_until is not None
        grace = old.publish_until - old.retired_at
        # access TTL 60 s + keyring cache 1 s + leeway 10 s
        assert grace == timedelta(seconds=71)
        later = await signing_keys.published(db, old.publish_until + timedelta(seconds=1))
    assert [k.kid for k in later] == [new_kid]


AUTH_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


async def test_local_mode_rotates_a_signing_key_it_cannot_decrypt_and_production_refuses() -> None:
    """A local database written under another key-encryption key (another checkout's generated key, or the
    old default): `make run` must still start (local mode rotates), production must refuse."""
    url = recreate_database(f"auth_keys_local_{os.environ['TEST_RUN_ID']}")
    run_migrations(AUTH_INI, url)
    engine = make_engine(url, pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        await Keyring(sessions, KeyCipher("a" * 40), cache_seconds=1).start()  # the other checkout's key
        with pytest.raises(KeyDecryptionError):
            await Keyring(sessions, KeyCipher("b" * 40), cache_seconds=1).start()
        local = Keyring(sessions, KeyCipher("b" * 40), cache_seconds=1, replace_undecryptable=True)
        await local.start()
        key = await local.signing_key()
        assert key.kid in {k["kid"] for k in (await local.jwks())["keys"]}
    finally:
        await engine.dispose()
