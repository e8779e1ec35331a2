"""Fixed-window attempt counters in Redis (login per account and per client address, reset requests).

An attempt is reserved *before* the password is checked (atomic INCR in a Lua script), so concurrent
guesses cannot slip past the limit; a successful login gives its reservation back.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from servicekit.errors import TooManyRequests

# KEYS: counters; ARGV[1]: window in ms; ARGV[2..]: limit per key. Returns the longest wait (ms) among
# counters over their limit, 0 when the attempt may proceed.
_RESERVE = """
local wait = 0
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  if n > tonumber(ARGV[i + 1]) then
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = tonumber(ARGV[1]) end
    if ttl > wait then wait = ttl end
  end
end
return wait
"""

# Give one attempt back without creating a counter that has no expiry.
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


def _digest(value: str) -> str:
    # Keys hold digests, not emails: Redis dumps and MONITOR output carry no personal data.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    max_attempts: int


class Throttle:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}throttle:"
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)

    def key(self, kind: str, value: str) -> str:
        return f"{self.prefix}{kind}:{_digest(value)}"

    async def reserve(self, limits: list[Limit], *, window_seconds: float, message: str) -> None:
        """Count one attempt against every limit; TooManyRequests (with Retry-After) when any is exceeded."""
        window_ms = max(1, math.ceil(window_seconds * 1000))
        wait_ms = int(
            await self._reserve(
                keys=[limit.key for limit in limits],
                args=[window_ms, *(limit.max_attempts for limit in limits)],
            )
        )
        if wait_ms > 0:
            raise TooManyRequests(message, retry_after=math.ceil(wait_ms / 1000))

    async def release(self, *keys: str) -> None:
        for key in keys:
            await self._release(keys=[key])

    async def count(self, key: str) -> int:
        return int(await self.redis.get(key) or 0)

    async def clear(self, key: str) -> None:
        await self.redis.delete(key)
