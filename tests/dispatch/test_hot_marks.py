"""The journal's mark is written where the row lies, without touching an index.

A message is claimed (its status changes: every index of the table gets an entry for the
new version) and then marked in flight (``call_started_at``, which no index names). On
PostgreSQL the mark is a HOT update only when the row's page has room for another
version; migration 0022 keeps room on the pages the wave writes (fillfactor 30), without
which most marks wrote an entry in every one of the table's indexes (at 85)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from backinstock.dispatch import outcomes
from backinstock.dispatch import service as dispatch
from backinstock.runtime import Runtime
from backinstock.senders.base import OutgoingMessage
from tests.conftest import BACKEND
from tests.dispatch.test_journal import _plan

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's storage")

UPDATES = text(
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'notifications'"
)


async def test_marking_a_claimed_message_in_flight_is_a_hot_update(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 300)
    now = runtime.clock.now()
    claim_id = uuid.uuid4()
    async with runtime.sessions() as session, session.begin():
        ids = await dispatch.claim(session, None, timedelta(minutes=5), claim_id, now)
        assert len(ids) == dispatch.BATCH  # whole pages of the wave's rows, all claimed
        claimed = (await session.execute(UPDATES)).one()
        starting = [(OutgoingMessage(i, "sms", "", "", ""), 0) for i in ids]
        marked = await outcomes.mark_inflight(session, claim_id, starting, now)
        assert marked == set(ids)
        updates, hot = (await session.execute(UPDATES)).one()
    assert updates - claimed[0] == len(ids)
    assert hot - claimed[1] == len(ids), "every mark found room on its row's page"
