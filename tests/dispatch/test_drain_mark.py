"""A drain starts past the last message its process' drains claimed (``_DrainMark``), not
at the head of the work index, where every message claimed before left an entry to walk;
and a message left behind below that mark is found in the same pass, once nothing is due
past it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import update

from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import Notification, Status
from backinstock.runtime import Runtime
from tests.dispatch.test_journal import _plan

SHOPPERS = 2 * dispatch.BATCH + 50


async def _drain_once(runtime: Runtime) -> list[uuid.UUID]:
    async with runtime.sessions() as session, session.begin():
        lease = timedelta(minutes=5)
        return await dispatch.claim(session, None, lease, uuid.uuid4(), runtime.clock.now())


async def test_a_drain_goes_on_past_its_mark_and_then_finds_what_was_left_behind(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], SHOPPERS)
    dispatch._DRAINS.stopped_at = None  # another test's drains ran in this process
    first = await _drain_once(runtime)
    assert len(first) == dispatch.BATCH
    left_behind = first[0]  # as a claim that rolled back leaves its messages: due, unclaimed
    async with runtime.sessions() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.id == left_behind)
            .values(status=Status.PENDING, claim_id=None, lease_until=None)
        )

    second = await _drain_once(runtime)
    assert len(second) == dispatch.BATCH and left_behind not in second, "from past the mark"
    third = await _drain_once(runtime)
    assert left_behind in third, "nothing more past the mark: from the start, in the same claim"
    assert len(third) == SHOPPERS - 2 * dispatch.BATCH + 1
    assert await _drain_once(runtime) == []
    claimed = first[1:] + second + third
    assert len(claimed) == len(set(claimed)) == SHOPPERS, "each message claimed once"
