"""Key lifecycle (create, rotate) and the in-process keyring that signs and publishes.

Rotation retires the active key with `publish_until = now + grace`, where grace covers the longest access
token it may have signed plus the time other auth processes keep signing with it from their cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth.keys import repository
from auth.keys.crypto import KeyCipher, KeyDecryptionError, public_jwk
from auth.models import SigningKey
from servicekit.auth import ALGORITHM, parse_jwks

log = logging.getLogger("auth.keys")


def _now() -> datetime:
    return datetime.now(UTC)


def _new_key(cipher: KeyCipher, now: datetime) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    jwk = public_jwk(private.public_key())
    return SigningKey(
        kid=jwk["kid"],
        algorithm=ALGORITHM,
        public_jwk=jwk,
        private_key_ciphertext=cipher.encrypt(jwk["kid"], private),
        created_at=now,
        retired_at=None,
        publish_until=None,
    )


async def ensure_active_key(session: AsyncSession, cipher: KeyCipher, *, now: datetime | None = None) -> str:
    """The active key's kid, creating the first key if there is none. Call inside a transaction."""
    await repository.lock(session)
    active = await repository.active(session)
    if active is not None:
        return active.kid
    key = _new_key(cipher, now or _now())
    await repository.add(session, key)
    log.info("created signing key %s", key.kid)
    return key.kid


async def rotate(
    session: AsyncSession, cipher: KeyCipher, *, grace: timedelta, now: datetime | None = None
) -> str:
    """Retire the active key (published for `grace` more) and make a new one active. Returns the new kid."""
    now = now or _now()
    await repository.lock(session)
    active = await repository.active(session)
    if active is not None:
        active.retired_at = now
        active.publish_until = now + grace
        await session.flush()  # the one-active-key index must see the retirement before the insert
    key = _new_key(cipher, now)
    await repository.add(session, key)
    log.info("rotated signing key %s -> %s", active.kid if active else None, key.kid)
    return key.kid


@dataclass(frozen=True, slots=True)
class ActiveKey:
    kid: str
    private_key: Ed25519PrivateKey


class Keyring:
    """The signing key and the published public keys, cached for `cache_seconds`, reread from the database.

    It is also the `KeySource` auth's own token verifier uses: no HTTP round trip to itself.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cipher: KeyCipher,
        *,
        cache_seconds: float,
        min_reload_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        replace_undecryptable: bool = False,
    ) -> None:
        self.sessions = sessions
        self.replace_undecryptable = replace_undecryptable
        self.cipher = cipher
        self.cache_seconds = cache_seconds
        self.min_reload_seconds = min(min_reload_seconds, cache_seconds)
        self.clock = clock
        self._active: ActiveKey | None = None
        self._jwks: list[dict[str, Any]] = []
        self._public: dict[str, Ed25519PublicKey] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self.sessions.begin() as session:
            await ensure_active_key(session, self.cipher)
        try:
            await self._reload(unless_younger_than=0)
        except KeyDecryptionError:
            if not self.replace_undecryptable:
                raise  # production: a wrong key-encryption key must stop the service, never be papered over
            # Local mode only: the database was written under another key (another checkout's generated key,
            # or an old default). Rotate to a key this process can use; tokens the old one signed stop verifying.
            log.warning(
                "the active signing key does not decrypt with this key-encryption key: rotating (local mode)"
            )
            async with self.sessions.begin() as session:
                await rotate(session, self.cipher, grace=timedelta(0))
            await self._reload(unless_younger_than=0)

    async def signing_key(self) -> ActiveKey:
        await self._reload_if_stale()
        if self._active is None:  # read between a rotation's retire and insert: look again
            await self._reload(unless_younger_than=self.min_reload_seconds)
        if self._active is None:
            raise RuntimeError("no active signing key")
        return self._active

    async def jwks(self) -> dict[str, list[dict[str, Any]]]:
        await self._reload_if_stale()
        return {"keys": list(self._jwks)}

    async def get(self, kid: str) -> Ed25519PublicKey | None:
        await self._reload_if_stale()
        if kid not in self._public:  # maybe rotated in by another process: look, at most once a second
            await self._reload(unless_younger_than=self.min_reload_seconds)
        return self._public.get(kid)

    async def _reload_if_stale(self) -> None:
        if self._loaded_at is None or self.clock() - self._loaded_at >= self.cache_seconds:
            await self._reload(unless_younger_than=self.cache_seconds)

    async def _reload(self, *, unless_younger_than: float) -> None:
        async with self._lock:  # single flight: whoever waited finds the fresh copy and returns
            if self._loaded_at is not None and self.clock() - self._loaded_at < unless_younger_than:
                return
            async with self.sessions() as session:
                rows = await repository.published(session, _now())
            active = next((r for r in rows if r.retired_at is None), None)
            self._active = (
                ActiveKey(active.kid, self.cipher.decrypt(active.kid, active.private_key_ciphertext))
                if active
                else None
            )
            self._jwks = [dict(r.public_jwk) for r in rows]
            self._public = parse_jwks({"keys": self._jwks})
            self._loaded_at = self.clock()
