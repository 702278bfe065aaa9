"""Rate limits on the ``limits`` library, for requests and for provider buckets alike.

* Request limits (subscribe, dashboard sign-in) are fixed windows: a hit returns how many
  seconds to wait when over the limit. Several limits of one request are counted in order,
  stopping at the first that refuses, so a client over its own limit spends nothing of a
  contact's; a count can be taken back, for requests that turn out not to count (a
  repeated subscribe is free).
* Provider buckets are moving windows of one second's worth of messages: a batch takes
  what the window grants and learns how long to wait for the rest.

The counts live in Redis when configured (shared by every process, through the process's
own Redis connection pool), else in this process. Redis is an accelerator, not a
dependency of the API: while it does not answer, request limits are counted in this
process (:class:`FallbackRateLimiter`), so requests keep their answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Protocol

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from backinstock.config import Rate
from backinstock.ops.metrics import RATE_LIMIT_LOCAL, REDIS_AVAILABLE

log = structlog.get_logger(__name__)

KEY_PREFIX = "bis:rl"


@dataclass(frozen=True)
class Hit:
    key: str
    rate: Rate


@dataclass(frozen=True)
class Counted:
    """A window counter one hit incremented, so that the hit can be taken back."""

    key: str
    window_seconds: int
    local: bool = False  # counted by the in-process fallback, not by Redis


@dataclass(frozen=True)
class Verdict:
    """The outcome of counting hits in order: which one refused (if any), and when to retry.
    ``counters`` names the window counters that were incremented, for :meth:`take_back`."""

    refused: int | None
    retry_after: int
    counters: tuple[Counted, ...]


@dataclass(frozen=True)
class Grant:
    granted: int
    retry_after: float  # seconds until the rest could be granted (0 when all were)


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: Rate) -> int | None: ...

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict: ...

    async def take_back(self, counter: Counted) -> None: ...


class Throttle(Protocol):
    async def take(self, bucket: str, wanted: int, rate: float) -> Grant: ...


@lru_cache(maxsize=64)
def _window(rate: Rate) -> RateLimitItem:
    return RateLimitItemPerSecond(rate.limit, multiples=rate.window_seconds)


@lru_cache(maxsize=64)
def _bucket(rate: float) -> RateLimitItem:
    """``rate`` messages a second as a whole number per window of whole seconds (2.5/s is
    5 per 2 s); a burst is at most one window's worth."""
    fraction = Fraction(rate).limit_denominator(3600)
    return RateLimitItemPerSecond(max(fraction.numerator, 1), multiples=fraction.denominator)


# A request's fixed windows counted in Redis in one round trip: for each key in order, what
# the library's FixedWindowRateLimiter does for one (its incr_expire.lua: INCRBY, EXPIRE
# when the count is new, refused above the limit), stopping at the first refused, with
# that key's seconds to live. The library counts one key per call, and a subscribe counts
# two (its client and its contact): the second call cost 0.07 ms of the API's CPU per
# request (bench/subscribe.py, "rate limits"). The keys and counts are the library's, so
# take_back and the library's own reads see the same counters (tests/test_ratelimit.py).
_COUNT_IN_ORDER = """
for i, key in ipairs(KEYS) do
  local count = redis.call('incrby', key, 1)
  if count == 1 then redis.call('expire', key, ARGV[2 * i]) end
  if count > tonumber(ARGV[2 * i - 1]) then return {i, redis.call('ttl', key)} end
end
return {0, 0}
"""


class Limiter:
    """Fixed windows for request limits and moving windows for provider buckets, over one
    ``limits`` storage (``redis``: the client behind a Redis storage, which then counts a
    request's windows in one call)."""

    def __init__(
        self, storage: Storage, *, local: bool = False, redis: Redis | None = None
    ) -> None:
        self._storage = storage
        self._fixed = FixedWindowRateLimiter(storage)
        self._moving = MovingWindowRateLimiter(storage)
        self._local = local
        self._count_in_order = None if redis is None else redis.register_script(_COUNT_IN_ORDER)

    async def hit(self, key: str, rate: Rate) -> int | None:
        verdict = await self.hit_all([Hit(key, rate)])
        return verdict.retry_after if verdict.refused is not None else None

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict:
        if self._count_in_order is not None and hits:
            return await self._hit_all_in_redis(self._count_in_order, hits)
        counters: list[Counted] = []
        for i, hit in enumerate(hits):
            window = _window(hit.rate)
            counters.append(Counted(window.key_for(hit.key), hit.rate.window_seconds, self._local))
            if not await self._fixed.hit(window, hit.key):
                return Verdict(i, await self._retry_after(counters[-1]), tuple(counters))
        return Verdict(None, 0, tuple(counters))

    @staticmethod
    async def _hit_all_in_redis(count_in_order: AsyncScript, hits: Sequence[Hit]) -> Verdict:
        counters = [Counted(_window(h.rate).key_for(h.key), h.rate.window_seconds) for h in hits]
        keys = [f"{KEY_PREFIX}:{c.key}" for c in counters]  # the storage's own prefixing
        limits = [n for h in hits for n in (h.rate.limit, h.rate.window_seconds)]
        refused, ttl = await count_in_order(keys=keys, args=limits)
        if not refused:
            return Verdict(None, 0, tuple(counters))
        return Verdict(int(refused) - 1, max(1, int(ttl)), tuple(counters[: int(refused)]))

    async def take_back(self, counter: Counted) -> None:
        await self._storage.incr(counter.key, counter.window_seconds, amount=-1)

    async def take(self, bucket: str, wanted: int, rate: float) -> Grant:
        window = _bucket(rate)
        stats = await self._moving.get_window_stats(window, bucket)
        granted = min(wanted, stats.remaining)
        if granted > 0 and not await self._moving.hit(window, bucket, cost=granted):
            granted = 0  # another worker took them meanwhile
        if granted == wanted:
            return Grant(granted, 0.0)
        # The oldest message in the window leaves it then, and frees its place.
        return Grant(granted, max(stats.reset_time - time.time(), 0.0))

    async def _retry_after(self, counter: Counted) -> int:
        expires = await self._storage.get_expiry(counter.key)
        return max(1, math.ceil(expires - time.time()))


class LocalStorage(MemoryStorage):
    """``limits``' in-process storage with fixed-window counters of its own.

    MemoryStorage walks every counter it holds after each hit (bench/RESULTS.md, "rate
    limits": 0.8 ms a check at 20,000 live counters), and a per-contact limit keeps a
    counter per shopper for an hour. These counters are dropped as they are read after
    their window, and swept only when there are more than ``SWEEP_ABOVE``. Moving windows
    (a handful of provider buckets) stay the library's."""

    SWEEP_ABOVE = 100_000

    def __init__(self) -> None:
        super().__init__()
        self._counters: dict[str, tuple[float, int]] = {}  # key -> (expires, count)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        expires, count = self._live(key, now)
        count += amount
        if count <= 0:  # a take-back of the last count
            self._counters.pop(key, None)
            return count
        self._counters[key] = (expires or now + expiry, count)
        if len(self._counters) > self.SWEEP_ABOVE:
            self._counters = {k: v for k, v in self._counters.items() if v[0] > now}
        return count

    async def get(self, key: str) -> int:
        return self._live(key, time.time())[1]

    async def get_expiry(self, key: str) -> float:
        now = time.time()
        return self._live(key, now)[0] or now

    async def clear(self, key: str) -> None:
        self._counters.pop(key, None)
        await super().clear(key)

    def _live(self, key: str, now: float) -> tuple[float, int]:
        expires, count = self._counters.get(key, (0.0, 0))
        if expires <= now:
            self._counters.pop(key, None)
            return 0.0, 0
        return expires, count


def shared_limiter(redis: Redis) -> Limiter:
    """Counts in Redis, through ``redis``'s connection pool (its timeouts and retries)."""
    storage = RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=KEY_PREFIX,
        # Documented (RedisStorage's ``connection_pool``), though typed as a scalar option.
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]
    )
    return Limiter(storage, redis=redis)


def local_limiter() -> Limiter:
    return Limiter(LocalStorage(), local=True)


class FallbackRateLimiter:
    """Redis's shared counters while Redis answers, this process's own while it does not.

    A failed call (refused, timed out, an error reply) switches to local counting at once,
    and Redis is tried again after ``retry_seconds``: while it is down, requests pay no
    connection attempts. Each API process then enforces the limits on the traffic it sees,
    so with N processes a client may get up to N times a limit until Redis returns. The
    outage is logged when it starts, at most once every ``log_every_seconds`` while it
    lasts, and when it ends; ``backinstock_redis_available`` and
    ``backinstock_rate_limit_local_total`` show it to Prometheus.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        retry_seconds: float = 2.0,
        log_every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._shared = shared_limiter(redis)
        self._local = local_limiter()
        self._retry_seconds = retry_seconds
        self._log_every = log_every_seconds
        self._clock = clock
        self._down = False
        self._retry_at = 0.0
        self._log_at = 0.0
        self._local_checks = 0
        REDIS_AVAILABLE.set(1)

    @property
    def redis_available(self) -> bool:
        return not self._down

    async def hit(self, key: str, rate: Rate) -> int | None:
        verdict = await self.hit_all([Hit(key, rate)])
        return verdict.retry_after if verdict.refused is not None else None

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict:
        if self._try_shared():
            try:
                verdict = await self._shared.hit_all(hits)
            except RedisError as exc:
                self._went_down(exc)
            else:
                self._came_back()
                return verdict
        self._counted_locally()
        return await self._local.hit_all(hits)

    async def take_back(self, counter: Counted) -> None:
        if counter.local:
            await self._local.take_back(counter)
        elif self._try_shared():  # a count Redis holds; lost with Redis if it went down
            try:
                await self._shared.take_back(counter)
            except RedisError as exc:
                self._went_down(exc)

    def _try_shared(self) -> bool:
        return not self._down or self._clock() >= self._retry_at

    def _went_down(self, exc: RedisError) -> None:
        now = self._clock()
        self._retry_at = now + self._retry_seconds
        if not self._down:
            self._down, self._local_checks, self._log_at = True, 0, now + self._log_every
            REDIS_AVAILABLE.set(0)
            log.warning(
                "redis_unavailable",
                use="rate_limits",
                error_type=type(exc).__name__,
                fallback="per-process counters",
            )

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            REDIS_AVAILABLE.set(1)
            log.warning("redis_available_again", use="rate_limits", local_checks=self._local_checks)

    def _counted_locally(self) -> None:
        RATE_LIMIT_LOCAL.inc()
        self._local_checks += 1
        now = self._clock()
        if now >= self._log_at:
            self._log_at = now + self._log_every
            log.warning(
                "redis_still_unavailable", use="rate_limits", local_checks=self._local_checks
            )
