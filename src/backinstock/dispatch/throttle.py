"""Provider rate limits as token buckets shared by every worker (Redis), or by this
process's workers in the embedded mode. A batch takes what the bucket grants; the rest
waits in the database for the time the bucket needs to refill."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis


@dataclass(frozen=True)
class Grant:
    granted: int
    retry_after: float  # seconds until the rest could be granted (0 when all were)


class Throttle(Protocol):
    async def take(self, bucket: str, wanted: int, rate: float) -> Grant: ...


def _refill(tokens: float, last: float, now: float, rate: float) -> float:
    return min(rate, tokens + (now - last) * rate)  # a burst of up to one second's worth


class MemoryThrottle:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = asyncio.Lock()

    async def take(self, bucket: str, wanted: int, rate: float) -> Grant:
        async with self._lock:
            now = time.monotonic()
            tokens, last = self._buckets.get(bucket, (rate, now))
            tokens = _refill(tokens, last, now, rate)
            granted = min(wanted, int(tokens))
            self._buckets[bucket] = (tokens - granted, now)
        missing = wanted - granted
        return Grant(granted, missing / rate if missing else 0.0)


# Refill and take atomically in Redis, on Redis's clock, so every worker on every host
# shares one bucket per provider.
_TAKE = """
local rate = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'last')
local tokens = tonumber(state[1]) or rate
local last = tonumber(state[2]) or now
tokens = math.min(rate, tokens + (now - last) * rate)
local granted = math.min(wanted, math.floor(tokens))
redis.call('HSET', KEYS[1], 'tokens', tokens - granted, 'last', now)
redis.call('EXPIRE', KEYS[1], 60)
return granted
"""


class RedisThrottle:
    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE)

    async def take(self, bucket: str, wanted: int, rate: float) -> Grant:
        granted = int(await self._take(keys=[f"bis:bucket:{bucket}"], args=[rate, wanted]))
        missing = wanted - granted
        return Grant(granted, missing / rate if missing else 0.0)
