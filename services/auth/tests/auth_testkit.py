"""Helpers for auth's tests: accounts through the real API, token forging with real and fake keys,
and a tiny app that uses `servicekit.auth` the way console and indexer do (served over real HTTP)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.auth import MAIL_TOPIC
from outbox import outbox_table
from servicekit.auth import AuthSettings, CurrentAccount, JwksKeySource, TokenVerifier
from servicekit.errors import install_error_handlers
from testsupport import free_port, wait_until

AUDIENCE = "outbox-reference"
ISSUER = "auth"
REDIS_URL = "redis://127.0.0.1:6379/0"
KEY_ENCRYPTION_KEY = secrets.token_urlsafe(32)
LOGIN_WINDOW_SECONDS = 2.0
MAX_FAILURES_PER_ADDRESS = 8
MAX_FAILURES_PER_ACCOUNT = 7
RESET_MAX_ATTEMPTS_PER_ACCOUNT = 8
REFRESH_REUSE_GRACE_SECONDS = 1.0


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.test"


def strong_password() -> str:
    return f"Pw-{secrets.token_hex(6)}-Zz9"


def fake_address() -> str:
    """A random private address sent as X-Forwarded-For (trusted from 127.0.0.1): one throttle bucket per test."""
    return "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))


@dataclass
class Secrets:
    """Every secret a test handled; none may appear in logs or error bodies."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)

    def found_in(self, text: str) -> list[str]:
        return sorted(v for v in self.values if v in text)


@dataclass
class Login:
    email: str
    password: str
    account_id: str
    access_token: str
    refresh_token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def register(
    http: httpx.AsyncClient, seen: Secrets, *, email: str | None = None
) -> tuple[str, str, str]:
    email = email or unique_email()
    password = strong_password()
    seen.add(password)
    r = await http.post(
        "/auth/api/register", json={"email": email, "password": password, "name": "Test User"}
    )
    assert r.status_code == 201, r.text
    return email, password, r.json()["id"]


async def login(http: httpx.AsyncClient, seen: Secrets, email: str, password: str) -> tuple[str, str]:
    r = await http.post("/auth/api/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    seen.add(body["access_token"], body["refresh_token"])
    return body["access_token"], body["refresh_token"]


async def new_login(http: httpx.AsyncClient, seen: Secrets) -> Login:
    email, password, account_id = await register(http, seen)
    access, refresh = await login(http, seen, email, password)
    return Login(email, password, account_id, access, refresh)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class Forger:
    """Builds tokens with auth's real active key (read from the database) or with keys of its own."""

    kid: str
    key: Ed25519PrivateKey

    def claims(self, account_id: str, email: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": account_id,
            "email": email,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 50,  # within the test access-token lifetime (60 s)
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self, claims: dict[str, Any], *, key: Ed25519PrivateKey | None = None, kid: str | None = None
    ) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA", headers={"kid": kid or self.kid})

    def attacks(self, account_id: str, email: str) -> dict[str, str]:
        good = self.claims(account_id, email)
        now = int(time.time())
        header = {"kid": self.kid, "typ": "JWT"}
        public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signing_input = f"{b64url_json({**header, 'alg': 'HS256'})}.{b64url_json(good)}"
        hs256 = (
            f"{signing_input}.{b64url(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())}"
        )
        valid = self.sign(good)
        h, _, sig = valid.split(".")
        tampered_claims = {**good, "sub": str(uuid.uuid4()), "email": "admin@example.test"}
        return {
            "alg_none": f"{b64url_json({**header, 'alg': 'none'})}.{b64url_json(good)}.",
            "hs256_signed_with_public_key": hs256,
            "wrong_key": self.sign(good, key=Ed25519PrivateKey.generate()),
            "expired": self.sign({**good, "iat": now - 600, "exp": now - 300}),
            "wrong_audience": self.sign({**good, "aud": "someone-else"}),
            "tampered_payload": f"{h}.{b64url_json(tampered_claims)}.{sig}",
            "unknown_kid": self.sign(
                good, key=Ed25519PrivateKey.generate(), kid=f"unknown-{uuid.uuid4().hex}"
            ),
            "wrong_issuer": self.sign({**good, "iss": "evil"}),
            "missing_exp": self.sign(self.claims(account_id, email, exp=None)),
            "issued_in_future": self.sign({**good, "iat": now + 3600, "exp": now + 3700}),
            "lifetime_too_long": self.sign({**good, "exp": now + 30 * 24 * 3600}),
            "not_a_jwt": "not-a-jwt",
        }


class VerifierApp:
    """A tiny service guarded by `servicekit.auth.CurrentAccount`, served by uvicorn on a free port."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.verifier: TokenVerifier | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def jwks(self) -> JwksKeySource:
        assert self.verifier is not None and isinstance(self.verifier.keys, JwksKeySource)
        return self.verifier.keys

    def build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, TokenVerifier]]:
            async with TokenVerifier.from_settings(self.settings) as verifier:
                self.verifier = verifier
                yield {"token_verifier": verifier}

        app = FastAPI(lifespan=lifespan)
        install_error_handlers(app)

        @app.get("/whoami")
        async def whoami(account: CurrentAccount) -> dict[str, str]:
            return {"id": str(account.id), "email": account.email}

        return app

    async def start(self) -> None:
        config = uvicorn.Config(self.build(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        server = self._server

        async def started() -> bool:
            return server.started

        await wait_until(started, timeout=10, what="verifier app started")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


async def request_reset_code(
    http: httpx.AsyncClient, engine: AsyncEngine, email: str, account_id: str
) -> str:
    r = await http.post(
        "/auth/api/reset-password", json={"email": email}, headers={"X-Forwarded-For": fake_address()}
    )
    assert r.status_code == 202
    async with engine.connect() as conn:
        payload = (
            await conn.execute(
                select(outbox_table.c.payload)
                .where(outbox_table.c.aggregate_id == account_id, outbox_table.c.topic == MAIL_TOPIC)
                .order_by(outbox_table.c.id.desc())
                .limit(1)
            )
        ).scalar_one()
    return str(payload["code"])
