"""Password reset by emailed code: request (emits the event a mail sender consumes), then confirm."""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from auth.accounts import repository as accounts
from auth.deps import Resources
from auth.email_login import service as email_login
from auth.errors import InvalidResetCode
from auth.models import PasswordReset
from auth.password_reset import repository
from auth.sessions import service as sessions
from auth.throttle import Limit
from contracts.auth import PasswordChanged, PasswordResetCode
from servicekit.db import UnitOfWork

log = logging.getLogger("auth.password_reset")

CODE_DIGITS = 8


async def request(uow: UnitOfWork, r: Resources, email: str, client_address: str) -> None:
    """Same answer whether or not the account exists; the code only travels on the mail topic."""
    s = r.settings
    await r.throttle.reserve(
        [
            Limit(r.throttle.key("reset-request", email), s.reset_max_requests),
            Limit(
                r.throttle.key("reset-request-address", client_address),
                s.reset_max_requests_per_address,
            ),
        ],
        window_seconds=s.reset_window_seconds,
        message="too many reset requests, retry later",
    )
    account = await accounts.get_by_email(uow.session, email)
    if account is None:
        return
    now = datetime.now(UTC)
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    reset = PasswordReset(
        id=uuid.uuid4(),
        account_id=account.id,
        created_at=now,
        expires_at=now + timedelta(seconds=s.reset_code_ttl_seconds),
        attempts=0,
    )
    reset.code_hash = r.codes.digest(reset.id.bytes, code)
    await repository.add(uow.session, reset)
    uow.emit(
        PasswordResetCode(
            account_id=account.id,
            email=account.email,
            name=account.name,
            reset_id=reset.id,
            code=code,
            expires_at=reset.expires_at,
        ).to_event()
    )
    log.info("password reset %s requested for account %s", reset.id, account.id)


async def confirm(
    uow: UnitOfWork, r: Resources, *, email: str, code: str, new_password: str, client_address: str
) -> None:
    s = r.settings
    # Wrong codes count per (account, address): a stranger's guesses block only the stranger. The
    # account-wide ceiling bounds guessing from many addresses (20 of 10^8 codes) and then cancels the
    # open codes: the owner requests a new one.
    pair_key = r.throttle.key("reset-guess", f"{email}|{client_address}")
    account_key = r.throttle.key("reset-guess-account", email)
    await r.throttle.reserve(
        [Limit(pair_key, s.reset_max_attempts), Limit(account_key, s.reset_max_attempts_per_account)],
        window_seconds=s.reset_code_ttl_seconds,
        message="too many wrong reset codes, retry later",
    )
    now = datetime.now(UTC)
    account = await accounts.get_by_email(uow.session, email, for_update=True)
    resets = await repository.open_for_update(uow.session, account.id, now) if account else []
    reset = next((row for row in resets if r.codes.matches(row.id.bytes, code, row.code_hash)), None)
    if account is None or reset is None:
        for open_reset in resets:
            open_reset.attempts += 1
        if account is not None and await r.throttle.count(account_key) >= s.reset_max_attempts_per_account:
            await repository.invalidate_open(uow.session, account.id, now)
        log.info("wrong reset code for account %s", account.id if account else "-")
        raise InvalidResetCode()  # commits the attempt counts (CommitsChanges)
    await r.throttle.release(pair_key, account_key)
    reset.used_at = now
    # Every other way in that the old state of the account handed out dies with the old password: the
    # other open reset codes and every email login code (cancelled before the commit: a failed commit
    # over-cancels, never under-cancels).
    await repository.invalidate_open(uow.session, account.id, now)
    cancelled = await email_login.cancel_all(r, account.id)
    account.password_hash = await r.hasher.hash(new_password)
    account.version += 1
    account.updated_at = now
    revoked = await sessions.revoke_all(uow, r, account.id, reason="password_reset")
    await r.throttle.clear(sessions.account_limit_key(r, account.email))
    uow.emit(
        PasswordChanged(
            account_id=account.id, email=account.email, version=account.version, reason="reset"
        ).to_event()
    )
    log.info(
        "password of account %s reset; %d session(s) revoked, %d login code(s) cancelled",
        account.id,
        revoked,
        cancelled,
    )
