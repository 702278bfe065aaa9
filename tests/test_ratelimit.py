"""Request limits and provider buckets, in Redis and in process; request limits fall back
to this process's counters while Redis is down, and go back to Redis's when it returns."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from limits.aio.storage import RedisStorage
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from backinstock.config import Rate
from backinstock.ratelimit import (
    KEY_PREFIX,
    FallbackRateLimiter,
    Grant,
    Hit,
    Limiter,
    local_limiter,
    shared_limiter,
)
from tests.conftest import REDIS_URL
from tests.server import RedisServer

pytestmark = pytest.mark.asyncio

RATE = Rate(limit=3, window_seconds=60)
SCOPE = f"t{uuid.uuid4().hex[:8]}-"  # this run's keys in the shared test database


def _local_checks() -> float:
    return REGISTRY.get_sample_value("backinstock_rate_limit_local_total") or 0.0


async def test_limits_hold_while_redis_is_down_and_return_to_redis(
    private_redis: RedisServer,
) -> None:
    now = [1000.0]
    redis = Redis.from_url(private_redis.url, socket_connect_timeout=1, socket_timeout=1)
    limiter = FallbackRateLimiter(redis, retry_seconds=2, clock=lambda: now[0])
    try:
        assert await limiter.hit("client", RATE) is None
        assert await redis.keys("bis:rl:*/client/*"), "counted in Redis while it answers"

        private_redis.stop()
        before = _local_checks()
        with capture_logs() as logs:
            verdicts = [await limiter.hit_all([Hit("client", RATE)]) for _ in range(5)]
        assert [v.refused for v in verdicts] == [None, None, None, 0, 0], "the limit still holds"
        assert verdicts[3].retry_after >= 1
        assert not limiter.redis_available
        assert REGISTRY.get_sample_value("backinstock_redis_available") == 0
        assert _local_checks() - before == 5
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["redis_unavailable"]

        # A count taken back returns to the limiter that took it.
        await limiter.take_back(verdicts[0].counters[0])
        assert (await limiter.hit_all([Hit("other", RATE)])).refused is None

        private_redis.start()
        assert (await limiter.hit_all([Hit("back", RATE)])).counters[0].local
        now[0] += 2  # the retry interval has passed: Redis again
        with capture_logs() as logs:
            verdict = await limiter.hit_all([Hit("back", RATE)])
        assert not verdict.counters[0].local
        assert limiter.redis_available
        assert REGISTRY.get_sample_value("backinstock_redis_available") == 1
        assert [e["event"] for e in logs] == ["redis_available_again"]
    finally:
        await redis.aclose()


async def test_an_outage_warns_again_at_most_once_a_minute(private_redis: RedisServer) -> None:
    now = [0.0]
    redis = Redis.from_url(private_redis.url, socket_connect_timeout=1, socket_timeout=1)
    limiter = FallbackRateLimiter(
        redis, retry_seconds=2, log_every_seconds=60, clock=lambda: now[0]
    )
    private_redis.stop()
    try:
        with capture_logs() as logs:
            for _ in range(150):  # two and a half minutes of a request every second
                await limiter.hit("client", Rate(limit=1000, window_seconds=60))
                now[0] += 1
        events = [e["event"] for e in logs]
        assert events.count("redis_unavailable") == 1
        assert events.count("redis_still_unavailable") == 2
    finally:
        await redis.aclose()


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "local":
        yield local_limiter()
        return
    redis = Redis.from_url(REDIS_URL)
    yield shared_limiter(redis)
    async for key in redis.scan_iter(match=f"bis:rl:*{SCOPE}*"):
        await redis.delete(key)
    await redis.aclose()


async def test_hits_stop_at_the_first_refusal_and_can_be_taken_back(limiter: Limiter) -> None:
    per_hour = Rate(limit=1, window_seconds=3600)
    client, contact = Hit(f"{SCOPE}client", per_hour), Hit(f"{SCOPE}contact", per_hour)
    first = await limiter.hit_all([client, contact])
    assert first.refused is None and len(first.counters) == 2

    second = await limiter.hit_all([client, contact])
    assert second.refused == 0 and len(second.counters) == 1, "the contact was not counted"
    assert 3000 < second.retry_after <= 3600

    await limiter.take_back(first.counters[1])
    assert await limiter.hit(f"{SCOPE}contact", per_hour) is None, "the count came back"
    assert await limiter.hit(f"{SCOPE}contact", per_hour) is not None


async def test_a_bucket_grants_one_window_and_says_when_to_come_back(limiter: Limiter) -> None:
    hourly = 1 / 3600  # one message per hour: a window no test run outlasts
    first = await limiter.take(f"{SCOPE}bucket", 3, hourly)
    assert first.granted == 1 and 3000 < first.retry_after <= 3600
    second = await limiter.take(f"{SCOPE}bucket", 3, hourly)
    assert second.granted == 0 and 3000 < second.retry_after <= 3600


async def test_a_fractional_rate_is_a_whole_number_per_window(limiter: Limiter) -> None:
    grant = await limiter.take(f"{SCOPE}fraction", 100, 2.5)
    assert grant.granted == 5, "2.5 a second is 5 per 2 seconds"
    everything = await limiter.take(f"{SCOPE}wide", 10, 1000)
    assert everything == Grant(10, 0.0)


async def test_redis_counts_a_requests_windows_in_one_call_on_the_librarys_counters() -> None:
    redis = Redis.from_url(REDIS_URL)
    calls: list[object] = []
    execute: Any = redis.execute_command

    async def counted(*args: object, **options: object) -> object:
        calls.append(args[0])
        return await execute(*args, **options)

    redis.execute_command = counted  # type: ignore[method-assign]
    limiter = shared_limiter(redis)
    hits = [Hit(f"{SCOPE}one-call-client", RATE), Hit(f"{SCOPE}one-call-contact", RATE)]
    try:
        verdict = await limiter.hit_all(hits)
        assert verdict.refused is None
        assert len(calls) == 1 and calls[0] in ("EVALSHA", "EVAL"), calls
        # The library reads the same counters, with the library's own expiry.
        library = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix=KEY_PREFIX,
            connection_pool=Redis.from_url(REDIS_URL).connection_pool,  # type: ignore[arg-type]
        )  # fmt: skip
        for counter in verdict.counters:
            assert await library.get(counter.key) == 1
            assert 0 < await library.get_expiry(counter.key) - time.time() <= 60
    finally:
        async for key in redis.scan_iter(match=f"bis:rl:*{SCOPE}one-call*"):
            await redis.delete(key)
        await redis.aclose()
