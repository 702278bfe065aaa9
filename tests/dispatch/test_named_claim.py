"""A wake-up's claim on PostgreSQL: the messages it names, locked by its UPDATE alone.

No ``FOR UPDATE SKIP LOCKED``: a named row another transaction holds is waited for, then
tested again as that transaction left it. Taken there, it is not taken twice; given back
(the other claim rolled back), it is taken, where skipping it would have left it with no
wake-up until the sweeper's drains found it. It waits ``NAMED_CLAIM_LOCK_TIMEOUT_MS`` at
most, then gives way."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from backinstock import db
from backinstock.db import utcnow
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.conftest import BACKEND
from tests.dispatch.test_journal import _plan
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's row locks")

LEASE = timedelta(minutes=1)


@pytest.mark.parametrize("first_commits", [True, False], ids=["taken", "given-back"])
async def test_a_named_claim_waits_for_rows_another_claim_holds(
    runtime: Runtime,
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    first_commits: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "NAMED_CLAIM_LOCK_TIMEOUT_MS", 60_000)  # waits it out here
    await _plan(runtime, client, api_keys["inventory"], 5)
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Notification.id).order_by(Notification.id)))
    async with runtime.sessions() as first, first.begin():
        held = await dispatch.claim(first, ids[:3], LEASE, uuid.uuid4(), utcnow())
        assert sorted(held) == ids[:3]
        second = asyncio.create_task(_claim_alone(runtime, ids))
        await eventually(lambda: _waiting_on_a_lock(runtime), 10, "the second claim waits")
        assert not second.done()
        if not first_commits:
            await first.rollback()
    taken = await second
    # Never a row both claims hold; never a row neither took.
    assert sorted(taken) == (ids[3:] if first_commits else ids)


async def test_a_named_claim_gives_way_to_a_lock_held_longer_than_its_timeout(
    runtime: Runtime,
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The side of a cycle of waits that fails is the claim (Dramatiq delivers it again),
    never the sell-out or the eraser that holds the row: it stops waiting first."""
    monkeypatch.setattr(dispatch, "NAMED_CLAIM_LOCK_TIMEOUT_MS", 50)
    await _plan(runtime, client, api_keys["inventory"], 5)
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Notification.id).order_by(Notification.id)))
    async with runtime.sessions() as holder, holder.begin():
        await holder.execute(text("SELECT 1 FROM notifications WHERE id = :id FOR UPDATE"),
                             {"id": ids[2]})  # fmt: skip
        with pytest.raises(DBAPIError, match="lock timeout"):
            await asyncio.wait_for(_claim_alone(runtime, ids), 10)
        await holder.rollback()
    # Nothing was taken by the claim that gave way; delivered again, it takes all five.
    assert sorted(await _claim_alone(runtime, ids)) == ids


async def _claim_alone(runtime: Runtime, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    async with db.hot_transaction(runtime.sessions) as session:
        return await dispatch.claim(session, ids, LEASE, uuid.uuid4(), utcnow())


async def _waiting_on_a_lock(runtime: Runtime) -> bool:
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with runtime.engine.connect() as conn:
        return bool((await conn.execute(query)).scalar())
