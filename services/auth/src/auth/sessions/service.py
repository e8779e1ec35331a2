"""Login, refresh-token rotation with reuse detection, logout, and revoking every session of an account.

Functions of the unit of work and auth's resources; they return `IssuedTokens`, never a response schema."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from auth.accounts import repository as accounts
from auth.deps import Resources
from auth.errors import RefreshTokenReused
from auth.models import Account, LoginSession, RefreshToken
from auth.sessions import repository as sessions
from auth.sessions.tokens import IssuedTokens, hash_refresh_token, issue_access_token, new_refresh_token
from auth.throttle import Limit
from servicekit.auth import VerifiedToken
from servicekit.db import UnitOfWork
from servicekit.errors import Unauthorized

log = logging.getLogger("auth.sessions")

INVALID_CREDENTIALS = "invalid email or password"


def account_limit_key(r: Resources, email: str) -> str:
    return r.throttle.key("login-account", email)


async def login(
    uow: UnitOfWork, r: Resources, *, email: str, password: str, client_address: str
) -> IssuedTokens:
    s = r.settings
    # Attempts are reserved before the password check (atomic, so concurrent guesses cannot slip past) and
    # given back on success. Per (account, address): a stranger's guesses lock out only the stranger; the
    # account-wide ceiling (far higher) bounds guessing from many addresses for one window at most.
    pair_key = r.throttle.key("login-pair", f"{email}|{client_address}")
    account_key = account_limit_key(r, email)
    address_key = r.throttle.key("login-address", client_address)
    await r.throttle.reserve(
        [
            Limit(pair_key, s.login_max_failures),
            Limit(account_key, s.login_max_failures_per_account),
            Limit(address_key, s.login_max_failures_per_address),
        ],
        window_seconds=s.login_window_seconds,
        message="too many login attempts, retry later",
    )
    found = await accounts.get_by_email(uow.session, email)
    verified_hash = found.password_hash if found else None
    # Verified against a dummy hash when there is no account: same cost, no enumeration by timing.
    ok = await r.hasher.verify(verified_hash, password)
    # Lock the account and check the hash is still the one verified: a password reset that committed
    # meanwhile wins (401), and a reset that comes later waits for this login's session and revokes it.
    account = await accounts.get(uow.session, found.id, for_update=True) if found and ok else None
    if account is None or account.password_hash != verified_hash:
        log.info("login failed (account known: %s)", found is not None)
        raise Unauthorized(INVALID_CREDENTIALS)
    await r.throttle.clear(pair_key)
    await r.throttle.release(account_key, address_key)
    if r.hasher.needs_rehash(account.password_hash):  # under the lock: never overwrites a reset
        account.password_hash = await r.hasher.hash(password)
    return await open_session(uow, r, account)


async def open_session(uow: UnitOfWork, r: Resources, account: Account) -> IssuedTokens:
    """A new refresh family and its first token pair, for an account whose credentials were checked."""
    now = datetime.now(UTC)
    login = LoginSession(id=uuid.uuid4(), account_id=account.id, created_at=now)
    await sessions.add(uow.session, login)
    log.info("account %s logged in, session %s", account.id, login.id)
    return await _issue(uow, r, account, login, now)


def session_end(r: Resources, login: LoginSession) -> datetime:
    """The session's absolute end: no refresh after it, and no token it issues lives past it."""
    return login.created_at + timedelta(seconds=r.settings.session_absolute_ttl_seconds)


async def refresh(uow: UnitOfWork, r: Resources, refresh_token: str) -> IssuedTokens:
    found = await sessions.refresh_token_for_update(uow.session, hash_refresh_token(refresh_token))
    if found is None:
        raise Unauthorized("invalid refresh token")
    token, login = found
    if login.revoked_at is not None:
        raise Unauthorized("session revoked")
    now = datetime.now(UTC)
    s = r.settings
    # Less than a second left: the new access token would be born expired (`exp` is in whole seconds).
    if session_end(r, login) - now < timedelta(seconds=1):
        raise Unauthorized("session expired: log in again")
    if token.used_at is not None and now - token.used_at < timedelta(seconds=s.refresh_reuse_grace_seconds):
        # Two tabs refreshing with one token at once: refuse the second, keep the session.
        raise Unauthorized("refresh token already used: use the newest one")
    if token.used_at is not None:
        # A rotated token came back: whoever holds a copy (thief or victim) loses the whole family.
        await revoke(uow, r, [login], reason="refresh_token_reuse", now=now)
        log.warning("refresh token reuse on session %s: session revoked", login.id)
        raise RefreshTokenReused()
    if token.expires_at <= now:
        raise Unauthorized("refresh token expired")
    account = await accounts.get(uow.session, login.account_id)
    if account is None:
        raise Unauthorized("account no longer exists")
    token.used_at = now
    return await _issue(uow, r, account, login, now)


async def logout(uow: UnitOfWork, r: Resources, token: VerifiedToken) -> None:
    now = datetime.now(UTC)
    await r.revocations.revoke_token(
        token.jti, token.expires_at - now.timestamp() + 2 * r.settings.clock_leeway_seconds
    )
    if token.session_id:
        login = await sessions.get_for_update(uow.session, uuid.UUID(token.session_id))
        if login is not None and login.revoked_at is None:
            await revoke(uow, r, [login], reason="logout", now=now)
    log.info("account %s logged out", token.account.id)


async def revoke_all(uow: UnitOfWork, r: Resources, account_id: uuid.UUID, *, reason: str) -> int:
    logins = await sessions.active_for_account(uow.session, account_id)
    await revoke(uow, r, logins, reason=reason, now=datetime.now(UTC))
    return len(logins)


async def revoke(
    uow: UnitOfWork, r: Resources, logins: Sequence[LoginSession], *, reason: str, now: datetime
) -> None:
    """Revoke families in the database and deny their access tokens in Redis.

    Redis first: if the commit then fails, the tokens are denied for nothing (safe); the other order
    could leave a revoked session's access tokens valid until they expire.
    """
    if not logins:
        return
    s = r.settings
    await r.revocations.revoke_sessions(
        # Twice the leeway: a verifier whose clock runs behind still accepts the last token that long.
        [str(login.id) for login in logins],
        s.access_token_ttl_seconds + 2 * s.clock_leeway_seconds,
    )
    for login in logins:
        login.revoked_at = now
        login.revoke_reason = reason
    await uow.session.flush()


async def _issue(
    uow: UnitOfWork, r: Resources, account: Account, login: LoginSession, now: datetime
) -> IssuedTokens:
    """A token pair for the session; neither token outlives the session's absolute end."""
    s = r.settings
    end = session_end(r, login)
    key = await r.keyring.signing_key()
    access = issue_access_token(
        key,
        account=account,
        session_id=login.id,
        issuer=s.jwt_issuer,
        audience=s.jwt_audience,
        ttl_seconds=s.access_token_ttl_seconds,
        not_after=end,
        now=now,
    )
    refresh_token, digest = new_refresh_token()
    await sessions.add(
        uow.session,
        RefreshToken(
            id=uuid.uuid4(),
            session_id=login.id,
            token_hash=digest,
            created_at=now,
            expires_at=min(now + timedelta(seconds=s.refresh_token_ttl_seconds), end),
        ),
    )
    return IssuedTokens(access_token=access.token, refresh_token=refresh_token, expires_in=access.expires_in)
