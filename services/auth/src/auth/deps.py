"""Request-scoped dependencies: the lifespan state's resources and the unit of work (the one place that commits)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, TypedDict

from fastapi import Depends, Request
from redis.asyncio import Redis

from auth.errors import CommitsChanges
from auth.keys.crypto import CodeHasher
from auth.keys.service import Keyring
from auth.passwords import PasswordHasher
from auth.settings import Settings
from auth.throttle import Throttle
from servicekit.auth import RevocationList, TokenVerifier
from servicekit.db import Database, UnitOfWork


class State(TypedDict):
    """What the lifespan yields; Starlette exposes each entry on `request.state`."""

    settings: Settings
    db: Database
    redis: Redis
    keyring: Keyring
    hasher: PasswordHasher
    codes: CodeHasher
    throttle: Throttle
    revocations: RevocationList
    token_verifier: TokenVerifier


def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def get_keyring(request: Request) -> Keyring:
    keyring: Keyring = request.state.keyring
    return keyring


def get_hasher(request: Request) -> PasswordHasher:
    hasher: PasswordHasher = request.state.hasher
    return hasher


def get_codes(request: Request) -> CodeHasher:
    codes: CodeHasher = request.state.codes
    return codes


def get_throttle(request: Request) -> Throttle:
    throttle: Throttle = request.state.throttle
    return throttle


def get_revocations(request: Request) -> RevocationList:
    revocations: RevocationList = request.state.revocations
    return revocations


def client_address(request: Request) -> str:
    # Behind the gateway, uvicorn's proxy-headers support has already applied X-Forwarded-For
    # (trusted only from FORWARDED_ALLOW_IPS, default 127.0.0.1).
    return request.client.host if request.client else "unknown"


async def unit_of_work(request: Request) -> AsyncIterator[UnitOfWork]:
    """Commit when the endpoint returns, roll back when it raises (except CommitsChanges refusals)."""
    db: Database = request.state.db
    async with db.sessions() as session:
        uow = UnitOfWork(session, db.writer)
        try:
            yield uow
        except BaseException as exc:
            if isinstance(exc, CommitsChanges):
                await uow.commit()
            else:
                await uow.rollback()
            raise
        await uow.commit()


SettingsDep = Annotated[Settings, Depends(get_settings)]
KeyringDep = Annotated[Keyring, Depends(get_keyring)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
CodesDep = Annotated[CodeHasher, Depends(get_codes)]
ThrottleDep = Annotated[Throttle, Depends(get_throttle)]
RevocationsDep = Annotated[RevocationList, Depends(get_revocations)]
ClientAddress = Annotated[str, Depends(client_address)]
# scope="function": the commit happens before the response is sent, so a client that got 201 can read it.
UowDep = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]
