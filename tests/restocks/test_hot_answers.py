"""A sync's answers are written where their events lie, without touching an index.

A catalogue sync inserts up to 1,000 events and, in the same transaction and under its
SKUs' locks, updates each with its answer (columns no index names). On PostgreSQL that is
a HOT update only when the event's page has room for a second version; migration 0023
keeps room on the pages (fillfactor 45), without which every answer wrote an entry in each
of the table's four indexes."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from backinstock import db
from backinstock.restocks import service as stock
from backinstock.restocks.schemas import RestockIn, RestockOut
from backinstock.runtime import Runtime
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's storage")

UPDATES = text(
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'restock_events'"
)


async def test_answering_a_syncs_events_is_a_hot_update(runtime: Runtime) -> None:
    now = runtime.clock.now()
    events = [
        stock.NewEvent(RestockIn(event_id=f"e-{n}", sku=f"SKU-{n}", available=5), now)
        for n in range(1000)
    ]
    async with db.transaction(runtime.sessions) as session:
        recorded = await stock.record_events(session, events, now)
        assert len(recorded) == 1000
        answers = [
            RestockOut(
                restock_id=recorded["default", e.payload.event_id],
                sku=e.payload.sku,
                available=5,
                waiting=0,
                first_wave=0,
                applied=True,
            )
            for e in events
        ]
        # Counted as a difference: the view also holds what earlier transactions of this
        # connection did and the server has not yet added to its totals.
        before = (await session.execute(UPDATES)).one_or_none() or (0, 0)
        await stock.answer_events(session, answers)
        updates, hot = (await session.execute(UPDATES)).one()
    assert updates - before[0] == 1000
    assert hot - before[1] == 1000, "every answer found room on its event's page"
