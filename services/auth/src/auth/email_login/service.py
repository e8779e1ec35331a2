"""Dify's email-code login: ask for a one-time code by email, exchange it for the same tokens a password
login gives.

Codes are 6 digits, kept in Redis only as HMACs (keyed from the key-encryption key) in one hash per account
with the code lifetime as TTL; each field is one open code, so a new request does not cancel an older one
(a stranger could otherwise keep cancelling the owner's codes). A code works once: `HDEL` of its field
succeeds for one caller only. Requests are limited per email and per address, wrong codes per (account,
address) with an account-wide ceiling that then cancels the open codes. Neither answer reveals whether the
email has an account. The code itself travels only on `auth.mail` (`auth.mail.login_code`).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from auth.accounts import repository as accounts
from auth.deps import Resources
from auth.errors import InvalidLoginCode
from auth.sessions import service as sessions
from auth.sessions.tokens import IssuedTokens
from auth.throttle import Limit
from contracts.auth import LoginCode
from servicekit.db import UnitOfWork

log = logging.getLogger("auth.email_login")

CODE_DIGITS = 6


def _key(r: Resources, account_id: uuid.UUID) -> str:
    return f"{r.settings.redis_prefix}email-login:{account_id}"


async def request(uow: UnitOfWork, r: Resources, email: str, client_address: str) -> None:
    s = r.settings
    await r.throttle.reserve(
        [
            Limit(r.throttle.key("email-code-request", email), s.email_code_max_requests),
            Limit(
                r.throttle.key("email-code-request-address", client_address),
                s.email_code_max_requests_per_address,
            ),
        ],
        window_seconds=s.email_code_ttl_seconds,
        message="too many login codes requested, retry later",
    )
    account = await accounts.get_by_email(uow.session, email)
    if account is None:
        return  # the same 202: nothing says whether the email has an account
    code_id = uuid.uuid4()
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    expires_at = datetime.now(UTC) + timedelta(seconds=s.email_code_ttl_seconds)
    key = _key(r, account.id)
    async with r.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, code_id.hex, r.codes.digest(code_id.bytes, code))
        pipe.expire(key, s.email_code_ttl_seconds)
        await pipe.execute()
    uow.emit(
        LoginCode(
            account_id=account.id,
            email=account.email,
            name=account.name,
            code=code,
            expires_at=expires_at,
        ).to_event()
    )
    log.info("login code requested for account %s", account.id)


async def exchange(uow: UnitOfWork, r: Resources, email: str, code: str, client_address: str) -> IssuedTokens:
    s = r.settings
    pair_key = r.throttle.key("email-code-guess", f"{email}|{client_address}")
    account_key = r.throttle.key("email-code-guess-account", email)
    await r.throttle.reserve(
        [
            Limit(pair_key, s.email_code_max_attempts),
            Limit(account_key, s.email_code_max_attempts_per_account),
        ],
        window_seconds=s.email_code_ttl_seconds,
        message="too many wrong login codes, retry later",
    )
    account = await accounts.get_by_email(uow.session, email)
    if account is None:
        raise InvalidLoginCode()
    key = _key(r, account.id)
    stored = {
        (k.decode() if isinstance(k, bytes) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in (await r.redis.hgetall(key)).items()
    }
    match = next(
        (
            field
            for field, digest in stored.items()
            if r.codes.matches(uuid.UUID(hex=field).bytes, code, digest)
        ),
        None,
    )
    # HDEL succeeds for exactly one caller: the code is single use even under concurrent exchanges.
    if match is None or await r.redis.hdel(key, match) != 1:
        if await r.throttle.count(account_key) >= s.email_code_max_attempts_per_account:
            await r.redis.delete(key)  # guessing from many addresses: every open code is cancelled
        raise InvalidLoginCode()
    await r.throttle.release(pair_key, account_key)
    log.info("account %s logged in with an email code", account.id)
    return await sessions.open_session(uow, r, account)
