"""Fixed-window rate limits, in Redis when configured (shared by every API process), else in
this process. A hit returns how many seconds to wait when over the limit.

Redis is an accelerator, not a dependency of the API: while it does not answer, limits are
counted in this process (:class:`FallbackRateLimiter`), so requests keep their answers.

Several limits of one request are counted in one call (one Redis round trip): in order,
stopping at the first that refuses, so a client over its own limit spends nothing of a
contact's. A count can be taken back, for requests that turn out not to count (a repeated
subscribe is free).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backinstock.config import Rate
from backinstock.ops.metrics import RATE_LIMIT_LOCAL, REDIS_AVAILABLE

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Hit:
    key: str
    rate: Rate


@dataclass(frozen=True)
class Verdict:
    """The outcome of counting hits in order: which one refused (if any), and when to retry.
    ``counters`` names the window counters that were incremented, for :meth:`take_back`."""

    refused: int | None
    retry_after: int
    counters: tuple[str, ...]


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: Rate) -> int | None: ...

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict: ...

    async def take_back(self, counter: str) -> None: ...


def _window(rate: Rate, now: float) -> tuple[int, int]:
    index = int(now // rate.window_seconds)
    retry_after = int((index + 1) * rate.window_seconds - now) + 1
    return index, retry_after


def _counter(hit: Hit, now: float) -> tuple[str, int]:
    index, retry_after = _window(hit.rate, now)
    return f"bis:rl:{hit.key}:{index}", retry_after


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}  # counter -> (expires, count)

    async def hit(self, key: str, rate: Rate) -> int | None:
        verdict = await self.hit_all([Hit(key, rate)])
        return verdict.retry_after if verdict.refused is not None else None

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict:
        now = time.time()
        counters: list[str] = []
        for i, hit in enumerate(hits):
            name, retry_after = _counter(hit, now)
            count = self._counts.get(name, (0.0, 0))[1] + 1
            self._counts[name] = (now + retry_after, count)
            counters.append(name)
            if count > hit.rate.limit:
                self._prune(now)
                return Verdict(i, retry_after, tuple(counters))
        self._prune(now)
        return Verdict(None, 0, tuple(counters))

    async def take_back(self, counter: str) -> None:
        expires, count = self._counts.get(counter, (0.0, 0))
        if count > 1:
            self._counts[counter] = (expires, count - 1)
        else:
            self._counts.pop(counter, None)

    def _prune(self, now: float) -> None:
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] >= now}


# Each counter: INCR, and set its expiry on first use; stop at the first over its limit and
# return its 1-based position (0: none refused). One round trip and one command for all
# (a pipeline costs the client more CPU than the server spends on the lot).
_HIT_ALL = """
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
  if count > tonumber(ARGV[2 * i - 1]) then return i end
end
return 0
"""

# A counter that expired meanwhile must not come back as -1 without an expiry.
_TAKE_BACK = """
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisRateLimiter:
    def __init__(self, redis: Redis) -> None:
        self._hit_all = redis.register_script(_HIT_ALL)
        self._take_back = redis.register_script(_TAKE_BACK)

    async def hit(self, key: str, rate: Rate) -> int | None:
        verdict = await self.hit_all([Hit(key, rate)])
        return verdict.retry_after if verdict.refused is not None else None

    async def hit_all(self, hits: Sequence[Hit]) -> Verdict:
        now = time.time()
        counters = [_counter(hit, now) for hit in hits]
        args: list[int] = []
        for hit in hits:
            args += [hit.rate.limit, hit.rate.window_seconds + 1]
        names = [name for name, _ in counters]
        refused = int(await self._hit_all(keys=names, args=args))
        if refused == 0:
            return Verdict(None, 0, tuple(names))
        return Verdict(refused - 1, counters[refused - 1][1], tuple(names[:refused]))

    async def take_back(self, counter: str) -> None:
        await self._take_back(keys=[counter], args=[])


# Counters of the local fallback carry this prefix, so a take-back finds the right limiter.
_LOCAL = "local:"


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
        self._shared = RedisRateLimiter(redis)
        self._local = MemoryRateLimiter()
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
        verdict = await self._local.hit_all(hits)
        return dataclasses.replace(verdict, counters=tuple(_LOCAL + c for c in verdict.counters))

    async def take_back(self, counter: str) -> None:
        if counter.startswith(_LOCAL):
            await self._local.take_back(counter.removeprefix(_LOCAL))
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
