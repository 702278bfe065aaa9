"""A pooled PostgreSQL connection is pinged before use only once it has been idle a while
(db.IDLE_BEFORE_PING_SECONDS): a connection the database dropped meanwhile is replaced
without the request seeing an error, and a busy pool pays no ping per checkout."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from backinstock import db
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="SQLite's pool does not ping")


@pytest.fixture
async def engine(migrated: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(migrated, pool_size=1)
    yield engine
    await engine.dispose()


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT pg_backend_pid()")))


async def _drop_from_the_database_side(migrated: str, pid: int) -> None:
    """Another connection ends the pooled one's backend, as a restart or a proxy would."""
    other = db.create_engine(migrated, pool_size=1)
    try:
        async with other.connect() as connection:
            assert await connection.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await other.dispose()


async def test_an_idle_connection_the_database_dropped_is_replaced_unseen(
    engine: AsyncEngine, migrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped = await _backend_pid(engine)
    await _drop_from_the_database_side(migrated, dropped)
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 0.0)  # every checkout counts as idle
    assert await _backend_pid(engine) != dropped


async def test_a_connection_given_back_just_now_is_used_without_a_ping(
    engine: AsyncEngine, migrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trade made for speed, shown: a connection in use a moment ago is trusted, so a
    database that dropped it within that moment fails one statement; the pool is then
    replaced and the next one works."""
    dropped = await _backend_pid(engine)
    await _drop_from_the_database_side(migrated, dropped)
    monkeypatch.setattr(db, "IDLE_BEFORE_PING_SECONDS", 3600.0)
    with pytest.raises(DBAPIError) as failed:
        await _backend_pid(engine)
    assert failed.value.connection_invalidated
    assert await _backend_pid(engine) != dropped
