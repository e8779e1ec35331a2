"""Account use cases: register, read. Functions of the unit of work; they return the account row."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from auth.accounts import repository
from auth.deps import Resources
from auth.models import Account
from auth.throttle import Limit
from contracts.auth import AccountRegistered
from servicekit.db import UnitOfWork
from servicekit.errors import Conflict, Unauthorized

log = logging.getLogger("auth.accounts")


async def register(
    uow: UnitOfWork, r: Resources, *, email: str, password: str, name: str, client_address: str
) -> Account:
    """Create the account and record `auth.account.registered` in the same transaction.

    Throttled per client address, and the password is hashed before the email is looked up, so a taken
    email costs the same time as a free one. (The 409 itself stays: a sign-up form must say the email is
    taken; the per-address limit bounds how fast anyone can ask.)"""
    s = r.settings
    await r.throttle.reserve(
        [Limit(r.throttle.key("register-address", client_address), s.register_max_per_address)],
        window_seconds=s.register_window_seconds,
        message="too many registrations from this address, retry later",
    )
    password_hash = await r.hasher.hash(password)
    if await repository.get_by_email(uow.session, email) is not None:
        raise Conflict("an account with this email already exists")
    now = datetime.now(UTC)
    account = Account(
        id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=password_hash,
        version=1,
        created_at=now,
        updated_at=now,
    )
    if not await repository.add(uow.session, account):  # lost a race with a concurrent registration
        raise Conflict("an account with this email already exists")
    uow.emit(
        AccountRegistered(account_id=account.id, email=email, name=name, version=account.version).to_event()
    )
    log.info("account %s registered", account.id)
    return account


async def get(uow: UnitOfWork, account_id: uuid.UUID) -> Account:
    account = await repository.get(uow.session, account_id)
    if account is None:
        raise Unauthorized("account no longer exists")
    return account
