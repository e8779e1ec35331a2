"""Request-scoped dependencies: the lifespan's resources and the request context (the one place that commits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypedDict

from fastapi import Depends, Request
from redis.asyncio import Redis

from auth.email_login.codes import CodeStore
from auth.keys.crypto import CodeHasher
from auth.keys.service import Keyring
from auth.passwords import PasswordHasher
from auth.settings import Settings
from auth.throttle import Throttle
from servicekit.auth import RevocationList, TokenVerifier
from servicekit.db import Database


@dataclass(frozen=True, slots=True)
class Resources:
    """What auth's use cases need besides their unit of work; created once, in the lifespan."""

    settings: Settings
    redis: Redis
    keyring: Keyring
    hasher: PasswordHasher
    codes: CodeHasher
    throttle: Throttle
    login_codes: CodeStore
    revocations: RevocationList


class State(TypedDict):
    """What the lifespan yields; Starlette exposes each entry on `request.state` (servicekit's readiness
    and token verification read `db`, `redis` and `token_verifier`)."""

    db: Database
    redis: Redis
    token_verifier: TokenVerifier
    resources: Resources


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


async def get_database(request: Request) -> Database:
    db: Database = request.state.db
    return db


async def client_address(request: Request) -> str:
    # Behind the gateway, uvicorn's proxy-headers support has already applied X-Forwarded-For
    # (trusted only from FORWARDED_ALLOW_IPS, default 127.0.0.1).
    return request.client.host if request.client else "unknown"


ResourcesDep = Annotated[Resources, Depends(get_resources)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ClientAddress = Annotated[str, Depends(client_address)]
