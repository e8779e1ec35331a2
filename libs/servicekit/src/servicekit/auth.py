"""Access-token verification for every service, without calling auth on the request path.

Tokens are EdDSA (Ed25519) JWTs signed by the auth service. Public keys come from auth's JWKS document,
fetched once and cached; an unknown `kid` triggers a refetch (single flight, rate-limited), which is how a
key rotation reaches the verifiers. Revocation (logout, refresh-token reuse, password reset) is a deny
list in Redis written by auth: one MGET per request for the token's `jti` and its session `sid`.

Usage in a service:

    from servicekit.auth import CurrentAccount, TokenVerifier

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        async with TokenVerifier.from_settings() as verifier:      # AUTH_JWKS_URL, AUTH_REDIS_URL, ...
            yield {"token_verifier": verifier, ...}

    @router.get("/things")
    async def things(account: CurrentAccount) -> ...: account.id, account.email
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from servicekit.errors import ServiceUnavailable, Unauthorized
from servicekit.settings import RedisUrlSettings

log = logging.getLogger("servicekit.auth")

ALGORITHM = "EdDSA"
STATE_KEY = "token_verifier"
REQUIRED_CLAIMS = ("exp", "iat", "sub", "jti", "aud", "iss")
VERIFIED_CACHE_SIZE = 4096  # tokens per process whose signature need not be checked again


def local_jwks_url() -> str:
    """Auth's JWKS on this machine, at AUTH_PORT (8001): moving auth's port moves the URL with it. Anywhere
    auth is another host (compose, a cluster), AUTH_JWKS_URL names it."""
    return f"http://127.0.0.1:{os.environ.get('AUTH_PORT') or '8001'}/auth/.well-known/jwks.json"


class AuthSettings(RedisUrlSettings):
    """The verifier's view of auth; the same AUTH_* names the auth service itself reads. AUTH_REDIS_URL names
    the verifier's own Redis user (read-only on the deny list where Redis has ACLs), AUTH_REDIS_PASSWORD its
    password; either may be a file (`_FILE`, servicekit.secrets)."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    jwks_url: str = Field(default_factory=local_jwks_url)
    jwt_audience: str = "outbox-reference"
    jwt_issuer: str = "auth"
    redis_prefix: str = "auth:"
    jwks_cache_seconds: float = 300.0
    jwks_min_refetch_seconds: float = 5.0
    jwks_timeout_seconds: float = 3.0
    # A hung Redis fails the request closed (503) within this, instead of hanging it.
    redis_timeout_seconds: float = 2.0
    clock_leeway_seconds: int = 10
    # Refuse tokens whose lifetime (exp - iat) exceeds this, whatever the signer says.
    max_token_lifetime_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class Account:
    id: uuid.UUID
    email: str


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    account: Account
    jti: str
    session_id: str | None
    kid: str
    issued_at: int
    expires_at: int


class KeySource(Protocol):
    """Where a verifier finds public keys by `kid`; returns None when the key is unknown."""

    async def get(self, kid: str) -> Ed25519PublicKey | None: ...


def parse_jwks(document: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 signing keys of a JWKS document; anything else in it is ignored."""
    keys: dict[str, Ed25519PublicKey] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS document has no 'keys' list")
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if (
            not isinstance(kid, str)
            or entry.get("kty") != "OKP"
            or entry.get("crv") != "Ed25519"
            or entry.get("alg", ALGORITHM) != ALGORITHM
            or entry.get("use", "sig") != "sig"
        ):
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=ALGORITHM).key
        except jwt.PyJWTError:
            log.warning("ignoring malformed JWK %s", kid)
            continue
        if isinstance(key, Ed25519PublicKey):
            keys[kid] = key
    return keys


class JwksKeySource:
    """Public keys from a JWKS URL, cached; refetched when stale or when a `kid` is unknown.

    Refetches are single-flight and at most one per `min_refetch_seconds`, so a flood of tokens with
    made-up `kid`s costs auth at most one request per interval. When a refetch fails, cached keys stay.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        cache_seconds: float = 300.0,
        min_refetch_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.client = client
        self.cache_seconds = cache_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.clock = clock
        self.fetches = 0
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> Ed25519PublicKey | None:
        fresh = self._fetched_at is not None and self.clock() - self._fetched_at < self.cache_seconds
        if fresh and kid in self._keys:
            return self._keys[kid]
        await self._refetch()
        if not self._keys:
            raise ServiceUnavailable("signing keys are unavailable")
        return self._keys.get(kid)

    async def ready(self) -> bool:
        """True when keys are held (fetching them now if none are): the verifier can check a token."""
        if not self._keys:
            await self._refetch()
        return bool(self._keys)

    async def _refetch(self) -> None:
        async with self._lock:
            if (
                self._attempted_at is not None
                and self.clock() - self._attempted_at < self.min_refetch_seconds
            ):
                return  # someone just fetched (or failed to): use what we have
            self._attempted_at = self.clock()
            try:
                response = await self.client.get(self.url)
                response.raise_for_status()
                keys = parse_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
                return
            self._keys = keys
            self._fetched_at = self.clock()
            self.fetches += 1
            log.info("JWKS fetched from %s: %d key(s)", self.url, len(keys))


class RevocationList:
    """The deny list in Redis: auth writes it, every verifier reads it. Keys expire with the tokens."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def token_key(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def session_key(self, session_id: str) -> str:
        return f"{self.prefix}revoked:sid:{session_id}"

    async def is_revoked(self, jti: str, session_id: str | None) -> bool:
        keys = [self.token_key(jti)]
        if session_id:
            keys.append(self.session_key(session_id))
        try:
            values = await self.redis.mget(keys)
        except RedisError as exc:
            # Fail closed: without the deny list a logged-out token would pass.
            log.error("revocation list unavailable: %s", type(exc).__name__)
            raise ServiceUnavailable("token revocation list is unavailable") from exc
        return any(v is not None for v in values)

    async def revoke_token(self, jti: str, ttl_seconds: float) -> None:
        await self.redis.set(self.token_key(jti), b"1", px=max(1000, math.ceil(ttl_seconds * 1000)))

    async def revoke_sessions(self, session_ids: Iterable[str], ttl_seconds: float) -> None:
        px = max(1000, math.ceil(ttl_seconds * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(self.session_key(sid), b"1", px=px)
            await pipe.execute()


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        revocations: RevocationList,
        *,
        audience: str,
        issuer: str,
        leeway_seconds: int = 10,
        max_lifetime_seconds: int = 3600,
    ) -> None:
        self.keys = keys
        self.revocations = revocations
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway_seconds
        self.max_lifetime = max_lifetime_seconds
        # Tokens whose signature and claims already checked out, by the token itself, with the key that
        # verified them: a client sends the same token with every request until it expires, and the
        # signature check and claim parsing are most of a verification's CPU. Bounded (oldest out first).
        self._verified: dict[str, tuple[Ed25519PublicKey, VerifiedToken]] = {}

    @classmethod
    @asynccontextmanager
    async def from_settings(cls, settings: AuthSettings | None = None) -> AsyncIterator[TokenVerifier]:
        """A verifier backed by auth's JWKS URL and Redis; closes its clients on exit."""
        s = settings or AuthSettings()
        redis = Redis.from_url(
            s.redis_url,
            socket_timeout=s.redis_timeout_seconds,
            socket_connect_timeout=s.redis_timeout_seconds,
        )
        async with httpx.AsyncClient(timeout=s.jwks_timeout_seconds) as client:
            try:
                keys = JwksKeySource(
                    s.jwks_url,
                    client,
                    cache_seconds=s.jwks_cache_seconds,
                    min_refetch_seconds=s.jwks_min_refetch_seconds,
                )
                yield cls(
                    keys,
                    RevocationList(redis, s.redis_prefix),
                    audience=s.jwt_audience,
                    issuer=s.jwt_issuer,
                    leeway_seconds=s.clock_leeway_seconds,
                    max_lifetime_seconds=s.max_token_lifetime_seconds,
                )
            finally:
                await redis.aclose()

    async def verify(self, token: str) -> VerifiedToken:
        """The verified token, or Unauthorized. Messages say what failed, never echo the token.

        A token verified before skips the signature check while it is unexpired (PyJWT's rule, with the
        same leeway) and its key is still the one the key source serves for its `kid` (a key withdrawn from
        the JWKS is no longer trusted here either); the deny list is asked every time."""
        cached = self._verified.get(token)
        if cached is not None:
            key, verified = cached
            if time.time() < verified.expires_at + self.leeway and await self.keys.get(verified.kid) is key:
                if await self.revocations.is_revoked(verified.jti, verified.session_id):
                    raise Unauthorized("token revoked")
                return verified
            del self._verified[token]
        verified, key = await self._verify_signed(token)
        if await self.revocations.is_revoked(verified.jti, verified.session_id):
            raise Unauthorized("token revoked")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (key, verified)
        return verified

    async def _verify_signed(self, token: str) -> tuple[VerifiedToken, Ed25519PublicKey]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        # Decide the algorithm ourselves: never trust the header's `alg` beyond refusing a mismatch.
        if header.get("alg") != ALGORITHM:
            raise Unauthorized("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 128:
            raise Unauthorized("token has no valid key id")
        key = await self.keys.get(kid)
        if key is None:
            raise Unauthorized("token signed by an unknown key")
        claims = self._decode(token, key)
        try:
            account = Account(id=uuid.UUID(str(claims["sub"])), email=str(claims.get("email", "")))
        except ValueError:
            raise Unauthorized("token subject is invalid") from None
        jti = claims["jti"]
        sid = claims.get("sid")
        if not isinstance(jti, str) or (sid is not None and not isinstance(sid, str)):
            raise Unauthorized("token identifiers are invalid")
        verified = VerifiedToken(
            account=account,
            jti=jti,
            session_id=sid,
            kid=kid,
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
        )
        return verified, key

    def _decode(self, token: str, key: Ed25519PublicKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience not accepted") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token") from None
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise Unauthorized("invalid token")
        if iat > time.time() + self.leeway or exp - iat > self.max_lifetime:
            raise Unauthorized("token lifetime not accepted")
        return claims


_bearer = HTTPBearer(auto_error=False, description="access token from POST /auth/api/login")


def _verifier(request: Request) -> TokenVerifier:
    verifier = getattr(request.state, STATE_KEY, None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError(f"no TokenVerifier in the lifespan state: yield {{{STATE_KEY!r}: verifier}}")
    return verifier


async def current_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> VerifiedToken:
    if credentials is None:
        raise Unauthorized("missing bearer token")
    return await _verifier(request).verify(credentials.credentials)


async def current_account(token: Annotated[VerifiedToken, Depends(current_token)]) -> Account:
    return token.account


CurrentToken = Annotated[VerifiedToken, Depends(current_token)]
CurrentAccount = Annotated[Account, Depends(current_account)]
