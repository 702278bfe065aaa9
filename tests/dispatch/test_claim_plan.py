"""A claim's statements find their rows by key, whatever the table's statistics say.

During a big wave the statistics lag the table: a million rows are written and claimed in
minutes, before autovacuum analyses them. On statistics that counted no pending row, the
claim of the ids a wake-up names was planned as a walk of every pending row of the work
index (41 ms a claim with 936,000 pending, against 0.5 ms by key). And a claim's id is in
no statistics at all: its marks and results, joined to the batch's arrays, were planned
for one row and compared every row with the whole array (200 x 200)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from backinstock import db
from backinstock.db import utcnow
from backinstock.dispatch import outcomes
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
    now = utcnow()
    params = {
        "b_now": now,
        "b_limit": dispatch.BATCH,
        "b_ids": ids,
        "b_claim": uuid.uuid4(),
        "b_until": now + timedelta(minutes=1),
    }
    plan = await _explain(runtime, dispatch._claim_statement(True, "postgresql").statement, params)
    # The key alone: no index of status (the work index, the open-messages index) is walked.
    assert set(re.findall(r"(?:using|on) ((?:ix|pk|uq)_\w+)", plan)) == {"pk_notifications"}, plan
    # Found once and locked by the update itself: no locking SELECT below it, whose rows
    # the update would look up by their key a second time.
    assert "LockRows" not in plan, plan
    assert plan.count("pk_notifications") == 1, plan


async def test_a_claims_marks_and_results_are_joined_to_their_rows_once(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 3000)
    async with runtime.engine.begin() as conn:
        await conn.execute(text("ANALYZE notifications"))  # no claim in the statistics
    claim_id = uuid.uuid4()
    async with db.transaction(runtime.sessions) as session:
        ids = await dispatch.claim(session, None, timedelta(minutes=1), claim_id, utcnow())
    assert len(ids) == dispatch.BATCH
    n = len(ids)
    common = {"b_claim": claim_id, "b_now": utcnow()}
    starting = db.rows_params("postgresql", "starting", id=ids, channel=["sms"] * n, rank=[0] * n)
    accepted = db.rows_params(
        "postgresql",
        "accepted",
        id=ids,
        provider_id=[f"outbox:{i}" for i in ids],
        channel=["sms"] * n,
        rank=[0] * n,
        resolution=["resent"] * n,
    )
    for statement, rows in (
        (outcomes._start_statement("postgresql"), starting),
        (outcomes._sent_statement("postgresql").statement, accepted),
    ):
        plan = await _explain(runtime, statement, {**rows, **common})
        # Each row meets its array entry by a hash or by the key, never by comparing it
        # with every entry of the batch.
        assert "Join Filter" not in plan, plan


async def _explain(runtime: Runtime, statement: Any, params: dict[str, Any]) -> str:
    """The plan PostgreSQL makes for ``statement`` with these values (not run)."""
    async with runtime.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        values = compiled.construct_params(params)
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        rows = await driver.fetch(
            "EXPLAIN " + str(compiled), *[values[name] for name in compiled.positiontup or []]
        )
    return "\n".join(row[0] for row in rows)
