"""Argon2id hashing off the event loop, and the minimum strength rule for new passwords."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError

from servicekit.errors import ServiceUnavailable

T = TypeVar("T")

MIN_LENGTH = 10
MAX_LENGTH = 128  # bounds hashing work per request


def strength_problem(password: str, *, email: str | None = None) -> str | None:
    """Why `password` is too weak, or None. The message never contains the password."""
    if len(password) < MIN_LENGTH:
        return f"password must have at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"password must have at most {MAX_LENGTH} characters"
    classes = sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )
    if classes < 2 or len(set(password)) < 5:
        return "password is too simple: mix letters with digits, capitals or symbols"
    if email and email.split("@", 1)[0].lower() in password.lower():
        return "password must not contain the email address"
    return None


class PasswordHasher:
    """Argon2id in worker threads. A semaphore bounds concurrent hashes (each takes memory_cost KiB) and a
    queue limit bounds how many requests may wait for one: past it, 503 at once instead of every login
    slowing down behind a registration flood."""

    def __init__(
        self,
        *,
        time_cost: int,
        memory_cost_kib: int,
        parallelism: int,
        concurrency: int,
        queue_limit: int = 32,
    ) -> None:
        self._argon2 = Argon2Hasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism, type=Type.ID
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._queue_limit = queue_limit
        self._waiting = 0
        # Verified against when the account does not exist, so timing does not reveal which emails exist.
        self._dummy_hash = self._argon2.hash("not-a-real-password")

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        if self._waiting >= self._queue_limit:
            raise ServiceUnavailable(
                "too many password checks in progress, retry shortly", headers={"Retry-After": "1"}
            )
        self._waiting += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(fn, *args)
        finally:
            self._waiting -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._argon2.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        return await self._run(self._verify, password_hash or self._dummy_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)
