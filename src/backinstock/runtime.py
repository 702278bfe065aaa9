"""Everything a running API process holds: settings, keys, database and Redis handles."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from backinstock import db
from backinstock.catalog.service import ProductCache
from backinstock.config import Settings
from backinstock.crypto import Keys, load_keys
from backinstock.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter


@dataclass
class Runtime:
    settings: Settings
    keys: Keys
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis | None
    limiter: RateLimiter
    products: ProductCache

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        keys = load_keys(settings.crypto, production=not settings.core.is_sqlite)
        engine = db.create_engine(settings.core.database_url, pool_size=settings.core.db_pool_size)
        redis = Redis.from_url(settings.core.redis_url) if settings.core.redis_url else None
        limiter: RateLimiter = RedisRateLimiter(redis) if redis else MemoryRateLimiter()
        sessions = db.sessionmaker(engine)
        return cls(settings, keys, engine, sessions, redis, limiter, ProductCache())

    async def close(self) -> None:
        await self.engine.dispose()
        if self.redis is not None:
            await self.redis.aclose()
