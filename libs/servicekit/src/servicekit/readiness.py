"""`GET /readyz`: can this process serve requests now? Each dependency the lifespan put on the request
state is checked with a bounded wait: the database (`SELECT 1`), Redis (`PING`), and for token verifiers the
deny list's Redis and the signing keys (JWKS). `/healthz` stays a liveness probe (the process answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text

from servicekit.auth import JwksKeySource, TokenVerifier
from servicekit.db import Database
from servicekit.errors import error_body

CHECK_TIMEOUT_SECONDS = 2.0


async def _database(db: Database) -> None:
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _redis(redis: Redis) -> None:
    await redis.ping()


async def _signing_keys(verifier: TokenVerifier) -> None:
    if isinstance(verifier.keys, JwksKeySource) and not await verifier.keys.ready():
        raise LookupError("no signing keys could be fetched")


def _checks(state: Any) -> dict[str, Callable[[], Awaitable[None]]]:
    checks: dict[str, Callable[[], Awaitable[None]]] = {}
    if isinstance(db := getattr(state, "db", None), Database):
        checks["database"] = lambda: _database(db)
    if isinstance(redis := getattr(state, "redis", None), Redis):
        checks["redis"] = lambda: _redis(redis)
    if isinstance(verifier := getattr(state, "token_verifier", None), TokenVerifier):
        if verifier.revocations.redis is not redis:
            checks["revocation_list"] = lambda: _redis(verifier.revocations.redis)
        checks["signing_keys"] = lambda: _signing_keys(verifier)
    return checks


async def check_readiness(state: Any) -> dict[str, str]:
    """Each dependency's check: "ok" or "failed: <error type>" (also what /metrics reports as service_ready)."""
    results: dict[str, str] = {}

    async def run(name: str, check: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
            results[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the detail names it, never a secret
            results[name] = f"failed: {type(exc).__name__}"

    await asyncio.gather(*(run(name, check) for name, check in _checks(state).items()))
    return results


async def readiness(request: Request) -> JSONResponse:
    results = await check_readiness(request.state)
    if all(result == "ok" for result in results.values()):
        return JSONResponse({"status": "ready", "checks": results})
    failed = sorted(name for name, result in results.items() if result != "ok")
    body = error_body("not_ready", f"not ready: {', '.join(failed)} unavailable", results)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
