"""Everything a running API process holds: settings, keys, database and Redis handles."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backinstock import db
from backinstock.catalog.service import ProductCache
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.config import Settings
from backinstock.crypto import Keys, load_keys
from backinstock.ratelimit import FallbackRateLimiter, RateLimiter, local_limiter
from backinstock.stats.pipeline import PipelineCache


@dataclass
class Runtime:
    settings: Settings
    keys: Keys
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis | None
    limiter: RateLimiter
    products: ProductCache
    clock: Clock = SYSTEM_CLOCK
    pipeline: PipelineCache = field(default_factory=PipelineCache)  # /metrics' figures

    @classmethod
    def create(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> Runtime:
        keys = load_keys(settings.crypto, production=not settings.core.is_sqlite)
        engine = db.create_engine(settings.core.database_url, pool_size=settings.core.db_pool_size)
        redis = _redis_client(settings) if settings.core.redis_url else None
        limiter: RateLimiter = FallbackRateLimiter(redis) if redis else local_limiter()
        sessions = db.sessionmaker(engine)
        return cls(settings, keys, engine, sessions, redis, limiter, ProductCache(), clock)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.redis is not None:
            await self.redis.aclose()


def _redis_client(settings: Settings) -> Redis:
    """Short timeouts and one retry (a pooled connection may be stale after a Redis restart):
    a Redis that hangs must not hold requests; they fall back and move on."""
    timeout = settings.core.redis_timeout_seconds
    return Redis.from_url(
        settings.core.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
    )
