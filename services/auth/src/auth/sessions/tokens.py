"""Minting tokens: EdDSA access JWTs and opaque refresh tokens (only their SHA-256 digest is stored)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import jwt

from auth.keys.service import ActiveKey
from auth.models import Account
from servicekit.auth import ALGORITHM


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    expires_at: int  # `exp`
    expires_in: int  # `exp - iat`: what the API answers as `expires_in`


def issue_access_token(
    key: ActiveKey,
    *,
    account: Account,
    session_id: uuid.UUID,
    issuer: str,
    audience: str,
    ttl_seconds: int,
    not_after: datetime,
    now: datetime,
) -> AccessToken:
    """Valid `ttl_seconds` from `now`, but never past `not_after` (the session's absolute end)."""
    iat = int(now.timestamp())
    exp = min(iat + ttl_seconds, int(not_after.timestamp()))  # whole seconds, rounded down: never past it
    jti = uuid.uuid4().hex
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": str(account.id),
        "email": account.email,
        "sid": str(session_id),
        "jti": jti,
        "iat": iat,
        "exp": exp,
    }
    token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})
    return AccessToken(token=token, jti=jti, expires_at=exp, expires_in=exp - iat)


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    """What a login, an email-code login or a refresh hands out (the endpoints map it to `TokenPair`).

    `expires_in` is the access token's own lifetime: shorter than the setting near the session's end."""

    access_token: str
    refresh_token: str
    expires_in: int


def new_refresh_token() -> tuple[str, bytes]:
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
