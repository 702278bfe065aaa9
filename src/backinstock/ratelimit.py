"""Fixed-window rate limits, in Redis when configured (shared by every API process), else in
this process. A hit returns how many seconds to wait when over the limit."""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis

from backinstock.config import Rate


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: Rate) -> int | None: ...


def _window(rate: Rate, now: float) -> tuple[int, int]:
    index = int(now // rate.window_seconds)
    retry_after = int((index + 1) * rate.window_seconds - now) + 1
    return index, retry_after


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}

    async def hit(self, key: str, rate: Rate) -> int | None:
        index, retry_after = _window(rate, time.time())
        slot = (key, index)
        count = self._counts.get(slot, 0) + 1
        self._counts[slot] = count
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= index - 1}
        return retry_after if count > rate.limit else None


# INCR and set the expiry on first use, in one round trip and one command (a pipeline
# costs the client more CPU than the server spends on both).
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


class RedisRateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._hit = redis.register_script(_HIT)

    async def hit(self, key: str, rate: Rate) -> int | None:
        index, retry_after = _window(rate, time.time())
        name = f"bis:rl:{key}:{index}"
        count = await self._hit(keys=[name], args=[rate.window_seconds + 1])
        return retry_after if int(count) > rate.limit else None
