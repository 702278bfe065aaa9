"""Rate limits fall back to this process's counters while Redis is down, and go back to
Redis's shared counters when it returns."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from backinstock.config import Rate
from backinstock.ratelimit import FallbackRateLimiter, Hit
from tests.server import RedisServer

pytestmark = pytest.mark.asyncio

RATE = Rate(limit=3, window_seconds=60)


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
        assert await redis.keys("bis:rl:client:*"), "counted in Redis while it answers"

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
        assert (await limiter.hit_all([Hit("back", RATE)])).counters[0].startswith("local:")
        now[0] += 2  # the retry interval has passed: Redis again
        with capture_logs() as logs:
            verdict = await limiter.hit_all([Hit("back", RATE)])
        assert not verdict.counters[0].startswith("local:")
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
