"""The auth service: `uvicorn auth.main:create_app --factory`.

Resources (engine, Redis, keyring) are created in the lifespan, never at import time, and disposed on
shutdown. The token verifier is the shared `servicekit.auth` one, fed by the local keyring instead of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from auth.accounts.endpoints import router as accounts_router
from auth.deps import Resources, State
from auth.email_login.codes import CodeStore
from auth.email_login.endpoints import router as email_login_router
from auth.keys.crypto import CodeHasher, KeyCipher
from auth.keys.endpoints import router as keys_router
from auth.keys.service import Keyring
from auth.mail import scrub_published_mail
from auth.password_reset.endpoints import router as reset_router
from auth.passwords import PasswordHasher
from auth.sessions.endpoints import router as sessions_router
from auth.settings import Settings
from auth.throttle import Throttle
from outbox import OutboxWriter
from outbox.telemetry.logs import configure_logging
from servicekit.app import create_service_app
from servicekit.auth import RevocationList, TokenVerifier
from servicekit.db import Database

log = logging.getLogger("auth")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging("auth", level=settings.log_level)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        db = Database(settings.database_url, OutboxWriter(source="auth"))
        timeout = settings.redis_timeout_seconds  # a hung Redis fails requests (503), it does not hang them
        redis = Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        scrubber = asyncio.create_task(scrub_published_mail(db, settings.mail_scrub_interval_seconds))
        try:
            secret = settings.key_encryption_key.get_secret_value()
            keyring = Keyring(
                db.sessions,
                KeyCipher(secret),
                cache_seconds=settings.key_cache_seconds,
                replace_undecryptable=settings.environment == "local",
            )
            await keyring.start()
            revocations = RevocationList(redis, settings.redis_prefix)
            resources = Resources(
                settings=settings,
                redis=redis,
                keyring=keyring,
                hasher=PasswordHasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost_kib=settings.argon2_memory_cost_kib,
                    parallelism=settings.argon2_parallelism,
                    concurrency=settings.hash_concurrency,
                    queue_limit=settings.hash_queue_limit,
                ),
                codes=CodeHasher(secret),
                throttle=Throttle(redis, settings.redis_prefix),
                login_codes=CodeStore(redis, settings.redis_prefix),
                revocations=revocations,
            )
            yield State(
                db=db,
                redis=redis,
                resources=resources,
                token_verifier=TokenVerifier(
                    keyring,
                    revocations,
                    audience=settings.jwt_audience,
                    issuer=settings.jwt_issuer,
                    leeway_seconds=settings.clock_leeway_seconds,
                    max_lifetime_seconds=settings.access_token_ttl_seconds + settings.clock_leeway_seconds,
                ),
            )
        finally:
            scrubber.cancel()
            await redis.aclose()
            await db.dispose()
            log.info("auth stopped: database and Redis connections closed")

    return create_service_app(
        name="auth",
        routers=[accounts_router, sessions_router, reset_router, email_login_router, keys_router],
        lifespan=lifespan,
        max_body_bytes=settings.max_body_bytes,
    )
