"""Where email login codes live: Redis, one key per code, each bound to the token its request returned.

    {prefix}email-login:code:{token digest}   hash {account, digest, guesses}, its own TTL, never extended
    {prefix}email-login:open:{account}        sorted set of the account's code keys by issue time (the cap)

Each operation is one Lua script, so concurrent requests and guesses cannot overshoot a bound: a code is
issued and the oldest beyond the cap cancelled atomically; a guess is counted before it is judged, and the
code is deleted by the guess that spends it; past its allowance it answers no guess.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1] the account's open set, KEYS[2] the new code's key. ARGV: now (ms), ttl (ms), cap, account, digest.
_ISSUE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'account', ARGV[4], 'digest', ARGV[5], 'guesses', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], KEYS[2])
local cancelled = 0
while redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[3]) do
  local oldest = redis.call('ZPOPMIN', KEYS[1])
  cancelled = cancelled + redis.call('DEL', oldest[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return cancelled
"""

# KEYS[1] the code's key. ARGV[1] the guesses a code allows. Counts one guess; returns {account, digest}
# while the allowance lasts, {} when the code is gone (expired, spent, cancelled) or out of guesses. A guess
# past the allowance does not delete the code: one of the allowed guesses, racing it, may be the right one.
_GUESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HINCRBY', KEYS[1], 'guesses', 1) > tonumber(ARGV[1]) then return {} end
return redis.call('HMGET', KEYS[1], 'account', 'digest')
"""

# KEYS[1] the account's open set: delete every code it lists, then the set.
_CANCEL_ALL = """
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, key in ipairs(keys) do redis.call('DEL', key) end
redis.call('DEL', KEYS[1])
return #keys
"""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A code still open for the token presented, with its one counted guess."""

    key: str
    account_id: uuid.UUID
    digest: bytes  # the code's HMAC


def token_id(token: str) -> bytes:
    """What the code's key and HMAC are derived from: a digest, so Redis never holds the token itself."""
    return hashlib.sha256(token.encode()).digest()[:16]


class CodeStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}email-login:"
        self._issue = redis.register_script(_ISSUE)
        self._guess = redis.register_script(_GUESS)
        self._cancel_all = redis.register_script(_CANCEL_ALL)

    def code_key(self, token: str) -> str:
        return f"{self.prefix}code:{token_id(token).hex()}"

    def open_key(self, account_id: uuid.UUID) -> str:
        return f"{self.prefix}open:{account_id}"

    async def issue(
        self, account_id: uuid.UUID, token: str, digest: bytes, *, now_ms: int, ttl_ms: int, cap: int
    ) -> int:
        """Store a code for `token`; returns how many of the account's older codes the cap cancelled."""
        return int(
            await self._issue(
                keys=[self.open_key(account_id), self.code_key(token)],
                args=[now_ms, ttl_ms, cap, str(account_id), digest.hex()],
            )
        )

    async def guess(self, token: str, max_guesses: int) -> Candidate | None:
        key = self.code_key(token)
        found = await self._guess(keys=[key], args=[max_guesses])
        if not found or found[0] is None:
            return None
        account, digest = (_text(v) for v in found)
        return Candidate(key, uuid.UUID(account), bytes.fromhex(digest))

    async def spend(self, candidate: Candidate) -> bool:
        """Single use: DEL succeeds for exactly one caller, even under concurrent exchanges."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(candidate.key)
            pipe.zrem(self.open_key(candidate.account_id), candidate.key)
            deleted, _ = await pipe.execute()
        return bool(deleted == 1)

    async def cancel_all(self, account_id: uuid.UUID) -> int:
        """Every open code of the account (a password reset): returns how many there were."""
        return int(await self._cancel_all(keys=[self.open_key(account_id)]))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
