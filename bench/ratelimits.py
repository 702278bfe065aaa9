"""What the ``limits`` library costs against hand-written Lua, per rate-limit check, on Redis.

Two uses, each measured both ways in one process, in alternating rounds:

* subscribe: the per-client and the per-contact fixed-window counters of one request. The
  hand-written way is one Lua call that increments both (the code before ``limits``, kept
  here as the reference); ``limits`` increments each counter with a call of its own.
* provider bucket: a batch of 50 asks for tokens. Hand-written: one Lua token bucket call;
  ``limits``: the moving window's stats, then one hit for what is left (two calls).

In process, the subscribe check is measured with 20,000 live counters (a per-contact limit
keeps one per shopper for an hour) and a turn of the event loop between checks, as between
requests in a server: the code before (a dict pruned past 100,000 counters), ``limits``'
MemoryStorage, and MemoryStorage with the fixed-window counters of ``ratelimit.LocalStorage``.

Figures are process CPU and wall time per check (a check never refuses: the limits are
set far above the load), medians over the rounds.

    .venv/bin/python bench/ratelimits.py --rounds 5 --checks 3000 --write
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from benchlib import source_state, write_results
from limits import RateLimitItemPerHour, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from redis.asyncio import Redis

from backinstock.ratelimit import LocalStorage

REDIS_URL = "redis://127.0.0.1:6379/10"  # below the suite's 15-13 (tests/conftest.py)

# The subscribe limits before ``limits``: INCR each counter, set its expiry on first use,
# stop at the first over its limit (one round trip for all counters).
HAND_HIT_ALL = """
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
  if count > tonumber(ARGV[2 * i - 1]) then return i end
end
return 0
"""
# The provider token bucket before ``limits``, refilled on Redis's clock.
HAND_TAKE = """
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
HIGH = 100_000_000
LIVE_COUNTERS = 20_000
BATCH = 50
BUCKET_RATE = 1_000_000  # messages a second: never empty at this load


Check = Callable[[int], Awaitable[object]]


def checks(redis: Redis, run: str) -> dict[str, Check]:
    """The four ways to check, by name; ``run`` keeps each round's keys apart."""
    hand_hit_all = redis.register_script(HAND_HIT_ALL)
    hand_take = redis.register_script(HAND_TAKE)
    storage = RedisStorage(
        "async+redis://",
        implementation="redispy",
        connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # options typed as scalars; a pool is accepted
        key_prefix=f"bench:{run}",
    )
    fixed = FixedWindowRateLimiter(storage)
    moving = MovingWindowRateLimiter(storage)
    per_minute = RateLimitItemPerMinute(HIGH)
    per_second = RateLimitItemPerSecond(BUCKET_RATE)

    async def subscribe_hand(i: int) -> object:
        keys = [f"bench:{run}:client:{i % 50}", f"bench:{run}:contact:{i}"]
        return await hand_hit_all(keys=keys, args=[HIGH, 61, HIGH, 3601])

    async def subscribe_limits(i: int) -> object:
        return await fixed.hit(per_minute, "client", str(i % 50)) and await fixed.hit(
            per_minute, "contact", str(i)
        )

    async def bucket_hand(i: int) -> object:
        return await hand_take(keys=[f"bench:{run}:bucket"], args=[BUCKET_RATE, BATCH])

    async def bucket_limits(i: int) -> object:
        stats = await moving.get_window_stats(per_second, "bucket")
        return await moving.hit(per_second, "bucket", cost=min(BATCH, stats.remaining))

    return {
        "subscribe, hand Lua": subscribe_hand,
        "subscribe, limits": subscribe_limits,
        "bucket, hand Lua": bucket_hand,
        "bucket, limits": bucket_limits,
    }


class HandCounters:
    """The in-process subscribe counters before ``limits``: a dict pruned past 100,000."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, window: int) -> bool:
        now = time.time()
        name = f"{key}:{int(now // window)}"
        count = self._counts.get(name, (0.0, 0))[1] + 1
        self._counts[name] = (now + window, count)
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] >= now}
        return count <= HIGH


async def in_process_checks() -> dict[str, Check]:
    """The in-process subscribe check three ways, each with LIVE_COUNTERS counters alive."""
    hand = HandCounters()
    memory = FixedWindowRateLimiter(MemoryStorage())
    local = FixedWindowRateLimiter(LocalStorage())
    per_minute, per_hour = RateLimitItemPerMinute(HIGH), RateLimitItemPerHour(HIGH)

    async def subscribe_hand(i: int) -> object:
        await asyncio.sleep(0)  # another request's turn
        return hand.hit(f"client:{i % 50}", 60) and hand.hit(f"contact:{i}", 3600)

    def with_limits(limiter: FixedWindowRateLimiter) -> Check:
        async def subscribe(i: int) -> object:
            await asyncio.sleep(0)
            return await limiter.hit(per_minute, "client", str(i % 50)) and await limiter.hit(
                per_hour, "contact", str(i)
            )

        return subscribe

    ways: dict[str, Check] = {
        "subscribe in process, hand dict": subscribe_hand,
        "subscribe in process, limits MemoryStorage": with_limits(memory),
        "subscribe in process, limits + LocalStorage": with_limits(local),
    }
    for check in ways.values():  # the counters of shoppers who subscribed this hour
        for i in range(LIVE_COUNTERS):
            await check(-1 - i)
    return ways


async def measure(check: Check, count: int) -> tuple[float, float]:
    """CPU and wall microseconds per check."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        await check(i)
    return (
        (time.process_time() - cpu) / count * 1e6,
        (time.perf_counter() - wall) / count * 1e6,
    )


async def run(url: str, rounds: int, count: int) -> dict[str, list[tuple[float, float]]]:
    redis = Redis.from_url(url)
    figures: dict[str, list[tuple[float, float]]] = {}
    try:
        for _ in range(rounds):
            prefix = uuid.uuid4().hex[:8]
            for name, check in checks(redis, prefix).items():
                await measure(check, count // 10)  # warm-up: scripts loaded, pool filled
                figures.setdefault(name, []).append(await measure(check, count))
            async for key in redis.scan_iter(match=f"bench:{prefix}*", count=1000):
                await redis.delete(key)
            for name, check in (await in_process_checks()).items():
                figures.setdefault(name, []).append(await measure(check, count))
    finally:
        await redis.aclose()
    return figures


def report(figures: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> str:
    def median(name: str, part: int) -> float:
        return statistics.median(f[part] for f in figures[name])

    rows = [f"| {name} | {median(name, 0):.0f} | {median(name, 1):.0f} |" for name in figures]
    ratios = [
        f"- {use}: limits / hand CPU = "
        f"{median(f'{use}, limits', 0) / median(f'{use}, hand Lua', 0):.2f}x"
        for use in ("subscribe", "bucket")
    ]
    hand = median("subscribe in process, hand dict", 0)
    ratios += [
        f"- {name}: {median(name, 0) / hand:.2f}x the hand dict's CPU"
        for name in figures
        if name.startswith("subscribe in process, limits")
    ]
    return "\n".join(
        [
            f"## {datetime.now(UTC):%Y-%m-%d} — rate limits: the limits library vs hand Lua",
            "",
            f"- command: `.venv/bin/python bench/ratelimits.py --rounds {args.rounds} "
            f"--checks {args.checks} --write`",
            f"- host: {platform.node()}, Python {platform.python_version()}; "
            f"source {source_state()}",
            f"- {args.rounds} alternating rounds of {args.checks} checks each, one at a time, "
            f"never refused; medians of the rounds; Redis {args.redis_url}; in process: "
            f"{LIVE_COUNTERS:,} live counters and a loop turn before each check",
            "",
            "| check | CPU µs/check | wall µs/check |",
            "|---|---|---|",
            *rows,
            "",
            *ratios,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--write", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    text = report(asyncio.run(run(args.redis_url, args.rounds, args.checks)), args)
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
