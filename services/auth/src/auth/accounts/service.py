from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from auth.accounts.repository import AccountRepository
from auth.models import Account
from auth.passwords import PasswordHasher
from auth.settings import Settings
from auth.throttle import Limit, Throttle
from contracts.auth import AccountRegistered
from servicekit.db import UnitOfWork
from servicekit.errors import Conflict, Unauthorized

log = logging.getLogger("auth.accounts")


class AccountService:
    def __init__(
        self, uow: UnitOfWork, hasher: PasswordHasher, throttle: Throttle, settings: Settings
    ) -> None:
        self.uow = uow
        self.accounts = AccountRepository(uow.session)
        self.hasher = hasher
        self.throttle = throttle
        self.settings = settings

    async def register(self, *, email: str, password: str, name: str, client_address: str) -> Account:
        """Create the account and record `auth.account.registered` in the same transaction.

        Throttled per client address, and the password is hashed before the email is looked up, so a taken
        email costs the same time as a free one. (The 409 itself stays: a sign-up form must say the email is
        taken; the per-address limit bounds how fast anyone can ask.)"""
        s = self.settings
        await self.throttle.reserve(
            [Limit(self.throttle.key("register-address", client_address), s.register_max_per_address)],
            window_seconds=s.register_window_seconds,
            message="too many registrations from this address, retry later",
        )
        password_hash = await self.hasher.hash(password)
        if await self.accounts.get_by_email(email) is not None:
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
        if not await self.accounts.add(account):  # lost a race with a concurrent registration
            raise Conflict("an account with this email already exists")
        self.uow.emit(
            AccountRegistered(
                account_id=account.id, email=email, name=name, version=account.version
            ).to_event()
        )
        log.info("account %s registered", account.id)
        return account

    async def get(self, account_id: uuid.UUID) -> Account:
        account = await self.accounts.get(account_id)
        if account is None:
            raise Unauthorized("account no longer exists")
        return account
