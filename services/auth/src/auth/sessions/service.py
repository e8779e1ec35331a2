"""Login, refresh-token rotation with reuse detection, logout, and revoking every session of an account."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from auth.accounts.repository import AccountRepository
from auth.errors import RefreshTokenReused
from auth.keys.service import Keyring
from auth.models import Account, LoginSession, RefreshToken
from auth.passwords import PasswordHasher
from auth.sessions.repository import SessionRepository
from auth.sessions.schemas import TokenPair
from auth.sessions.tokens import hash_refresh_token, issue_access_token, new_refresh_token
from auth.settings import Settings
from auth.throttle import Limit, Throttle
from servicekit.auth import RevocationList, VerifiedToken
from servicekit.db import UnitOfWork
from servicekit.errors import Unauthorized

log = logging.getLogger("auth.sessions")

INVALID_CREDENTIALS = "invalid email or password"


class SessionService:
    def __init__(
        self,
        uow: UnitOfWork,
        *,
        settings: Settings,
        keyring: Keyring,
        hasher: PasswordHasher,
        throttle: Throttle,
        revocations: RevocationList,
    ) -> None:
        self.uow = uow
        self.settings = settings
        self.keyring = keyring
        self.hasher = hasher
        self.throttle = throttle
        self.revocations = revocations
        self.accounts = AccountRepository(uow.session)
        self.sessions = SessionRepository(uow.session)

    def account_limit_key(self, email: str) -> str:
        return self.throttle.key("login-account", email)

    async def login(self, *, email: str, password: str, client_address: str) -> TokenPair:
        s = self.settings
        # Attempts are reserved before the password check (atomic, so concurrent guesses cannot slip past) and
        # given back on success. Per (account, address): a stranger's guesses lock out only the stranger; the
        # account-wide ceiling (far higher) bounds guessing from many addresses for one window at most.
        pair_key = self.throttle.key("login-pair", f"{email}|{client_address}")
        account_key = self.account_limit_key(email)
        address_key = self.throttle.key("login-address", client_address)
        await self.throttle.reserve(
            [
                Limit(pair_key, s.login_max_failures),
                Limit(account_key, s.login_max_failures_per_account),
                Limit(address_key, s.login_max_failures_per_address),
            ],
            window_seconds=s.login_window_seconds,
            message="too many login attempts, retry later",
        )
        found = await self.accounts.get_by_email(email)
        verified_hash = found.password_hash if found else None
        # Verified against a dummy hash when there is no account: same cost, no enumeration by timing.
        ok = await self.hasher.verify(verified_hash, password)
        # Lock the account and check the hash is still the one verified: a password reset that committed
        # meanwhile wins (401), and a reset that comes later waits for this login's session and revokes it.
        account = await self.accounts.get(found.id, for_update=True) if found and ok else None
        if account is None or account.password_hash != verified_hash:
            log.info("login failed (account known: %s)", found is not None)
            raise Unauthorized(INVALID_CREDENTIALS)
        await self.throttle.clear(pair_key)
        await self.throttle.release(account_key, address_key)
        if self.hasher.needs_rehash(account.password_hash):  # under the lock: never overwrites a reset
            account.password_hash = await self.hasher.hash(password)
        return await self.open_session(account)

    async def open_session(self, account: Account) -> TokenPair:
        """A new refresh family and its first token pair, for an account whose credentials were checked."""
        now = datetime.now(UTC)
        login = LoginSession(id=uuid.uuid4(), account_id=account.id, created_at=now)
        await self.sessions.add(login)
        log.info("account %s logged in, session %s", account.id, login.id)
        return await self._issue(account, login.id, now)

    async def refresh(self, refresh_token: str) -> TokenPair:
        found = await self.sessions.refresh_token_for_update(hash_refresh_token(refresh_token))
        if found is None:
            raise Unauthorized("invalid refresh token")
        token, login = found
        if login.revoked_at is not None:
            raise Unauthorized("session revoked")
        now = datetime.now(UTC)
        if login.created_at + timedelta(seconds=self.settings.session_absolute_ttl_seconds) <= now:
            raise Unauthorized("session expired: log in again")
        if token.used_at is not None and now - token.used_at < timedelta(
            seconds=self.settings.refresh_reuse_grace_seconds
        ):
            # Two tabs refreshing with one token at once: refuse the second, keep the session.
            raise Unauthorized("refresh token already used: use the newest one")
        if token.used_at is not None:
            # A rotated token came back: whoever holds a copy (thief or victim) loses the whole family.
            await self.revoke([login], reason="refresh_token_reuse", now=now)
            log.warning("refresh token reuse on session %s: session revoked", login.id)
            raise RefreshTokenReused()
        if token.expires_at <= now:
            raise Unauthorized("refresh token expired")
        account = await self.accounts.get(login.account_id)
        if account is None:
            raise Unauthorized("account no longer exists")
        token.used_at = now
        return await self._issue(account, login.id, now)

    async def logout(self, token: VerifiedToken) -> None:
        now = datetime.now(UTC)
        await self.revocations.revoke_token(
            token.jti, token.expires_at - now.timestamp() + 2 * self.settings.clock_leeway_seconds
        )
        if token.session_id:
            login = await self.sessions.get(uuid.UUID(token.session_id))
            if login is not None and login.revoked_at is None:
                await self.revoke([login], reason="logout", now=now)
        log.info("account %s logged out", token.account.id)

    async def revoke_all(self, account_id: uuid.UUID, *, reason: str) -> int:
        logins = await self.sessions.active_for_account(account_id)
        await self.revoke(logins, reason=reason, now=datetime.now(UTC))
        return len(logins)

    async def revoke(self, logins: Sequence[LoginSession], *, reason: str, now: datetime) -> None:
        """Revoke families in the database and deny their access tokens in Redis.

        Redis first: if the commit then fails, the tokens are denied for nothing (safe); the other order
        could leave a revoked session's access tokens valid until they expire.
        """
        if not logins:
            return
        s = self.settings
        await self.revocations.revoke_sessions(
            # Twice the leeway: a verifier whose clock runs behind still accepts the last token that long.
            [str(login.id) for login in logins],
            s.access_token_ttl_seconds + 2 * s.clock_leeway_seconds,
        )
        for login in logins:
            login.revoked_at = now
            login.revoke_reason = reason
        await self.uow.session.flush()

    async def _issue(self, account: Account, session_id: uuid.UUID, now: datetime) -> TokenPair:
        s = self.settings
        key = await self.keyring.signing_key()
        access = issue_access_token(
            key,
            account=account,
            session_id=session_id,
            issuer=s.jwt_issuer,
            audience=s.jwt_audience,
            ttl_seconds=s.access_token_ttl_seconds,
            now=now,
        )
        refresh, digest = new_refresh_token()
        await self.sessions.add(
            RefreshToken(
                id=uuid.uuid4(),
                session_id=session_id,
                token_hash=digest,
                created_at=now,
                expires_at=now + timedelta(seconds=s.refresh_token_ttl_seconds),
            )
        )
        return TokenPair(
            access_token=access.token, refresh_token=refresh, expires_in=s.access_token_ttl_seconds
        )
