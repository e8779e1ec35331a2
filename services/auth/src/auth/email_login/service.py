"""Dify's email-code login: ask for a one-time code by email, exchange it for the same tokens a password
login gives.

The request answers with a `token` (Dify's send call does the same); the code is bound to it, and the
exchange must present both. So a guess is always a guess at one code, and a stranger who does not hold the
owner's token cannot spend, burn or even reach the owner's code. Per code (`codes.py`): a 6-digit code
kept only as an HMAC, its own lifetime that nothing extends, at most `email_code_max_guesses` guesses, single
use. Per account: at most `email_code_max_open` open codes (a request beyond it cancels the oldest). Per
email: `email_code_max_requests` requests per `email_code_request_window_seconds`, which bounds both the
mail one inbox receives and every guess an attacker can make (services/auth/README.md has the arithmetic).
Neither answer reveals whether the email has an account. The code itself travels only on `auth.mail`.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

from auth.accounts import repository as accounts
from auth.deps import Resources
from auth.email_login.codes import token_id
from auth.errors import InvalidLoginCode
from auth.sessions import service as sessions
from auth.sessions.tokens import IssuedTokens
from auth.throttle import Limit
from contracts.auth import LoginCode
from servicekit.db import UnitOfWork

log = logging.getLogger("auth.email_login")

CODE_DIGITS = 6


async def request(uow: UnitOfWork, r: Resources, email: str, client_address: str) -> str:
    """Returns the token the exchange must present: the same kind of answer whether or not the email has
    an account (a token for no account simply matches no code)."""
    s = r.settings
    await r.throttle.reserve(
        [
            Limit(r.throttle.key("email-code-request", email), s.email_code_max_requests),
            Limit(
                r.throttle.key("email-code-request-address", client_address),
                s.email_code_max_requests_per_address,
            ),
        ],
        window_seconds=s.email_code_request_window_seconds,
        message="too many login codes requested, retry later",
    )
    token = secrets.token_urlsafe(24)
    account = await accounts.get_by_email(uow.session, email)
    if account is None:
        return token
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    issued_ms = time.time_ns() // 1_000_000
    expires_at = datetime.fromtimestamp(issued_ms / 1000, UTC) + timedelta(seconds=s.email_code_ttl_seconds)
    cancelled = await r.login_codes.issue(
        account.id,
        token,
        r.codes.digest(token_id(token), code),
        now_ms=issued_ms,
        ttl_ms=s.email_code_ttl_seconds * 1000,
        cap=s.email_code_max_open,
    )
    uow.emit(
        LoginCode(
            account_id=account.id,
            email=account.email,
            name=account.name,
            code=code,
            expires_at=expires_at,
        ).to_event()
    )
    log.info("login code requested for account %s (%d older code(s) cancelled)", account.id, cancelled)
    return token


async def exchange(
    uow: UnitOfWork, r: Resources, email: str, code: str, token: str, client_address: str
) -> IssuedTokens:
    s = r.settings
    # Per (email, address) only: a stranger's wrong guesses slow the stranger, never the owner's address.
    # What bounds guessing overall is the code's own allowance, not this.
    pair_key = r.throttle.key("email-code-guess", f"{email}|{client_address}")
    await r.throttle.reserve(
        [Limit(pair_key, s.email_code_max_attempts)],
        window_seconds=s.email_code_ttl_seconds,
        message="too many wrong login codes, retry later",
    )
    candidate = await r.login_codes.guess(token, s.email_code_max_guesses)
    account = await accounts.get_by_email(uow.session, email) if candidate is not None else None
    if (
        candidate is None
        or account is None
        or account.id != candidate.account_id
        or not r.codes.matches(token_id(token), code, candidate.digest)
        or not await r.login_codes.spend(candidate)
    ):
        raise InvalidLoginCode()
    await r.throttle.release(pair_key)
    log.info("account %s logged in with an email code", account.id)
    return await sessions.open_session(uow, r, account)


async def cancel_all(r: Resources, account_id: uuid.UUID) -> int:
    """Every open login code of the account (its password was reset)."""
    return await r.login_codes.cancel_all(account_id)
