"""A wake-up's claim finds its messages by their key, whatever the table's statistics say.

During a big wave the statistics lag the table: a million rows are written and claimed in
minutes, before autovacuum analyses them. On statistics that counted no pending row, the
claim of the ids a wake-up names was planned as a walk of every pending row of the work
index (41 ms a claim with 936,000 pending, against 0.5 ms by key)."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import select, text

from backinstock.db import utcnow
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.conftest import BACKEND
from tests.dispatch.test_journal import _plan

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's planner")


async def test_a_claim_by_ids_uses_the_key_on_statistics_that_lag_the_wave(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 3000)
    async with runtime.engine.begin() as conn:
        # Statistics taken while no message was pending, then the wave: as during one.
        await conn.execute(text("UPDATE notifications SET status = 'sent'"))
        await conn.execute(text("ANALYZE notifications"))
        await conn.execute(text("UPDATE notifications SET status = 'pending'"))
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Notification.id).limit(dispatch.BATCH)))
    params = {"b_now": utcnow(), "b_limit": dispatch.BATCH, "b_ids": ids}
    async with runtime.engine.connect() as conn:
        compiled = dispatch._due(True, "postgresql").compile(dialect=conn.dialect)
        values = compiled.construct_params(params)
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        rows = await driver.fetch(
            "EXPLAIN " + str(compiled), *[values[name] for name in compiled.positiontup or []]
        )
    plan = "\n".join(row[0] for row in rows)
    # The key alone: no index of status (the work index, the open-messages index) is walked.
    assert set(re.findall(r"(?:using|on) ((?:ix|pk|uq)_\w+)", plan)) == {"pk_notifications"}, plan
