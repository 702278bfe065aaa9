"""Indexes that leave out the rows nobody looks up in them (revision 0026).

A message's three versions (planned, claimed, sent) each get an entry in every index whose
predicate they meet, so the work index keeps only open messages, the ``sent_at`` indexes
only sent ones and the provider's id only messages that have one; the shoppers'
``customer_id`` and ``segment`` only shoppers that have one. The readers those indexes
exist for must still reach them: their statements imply the predicates."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import db, migrations
from backinstock.db import utcnow
from backinstock.dispatch import notifications, service
from backinstock.dispatch.models import DeliveryReport
from backinstock.runtime import Runtime
from backinstock.stats import pipeline
from tests.conftest import BACKEND
from tests.dispatch.test_journal import _plan
from tests.scratch_db import scratch_database

PARTIAL = {
    "ix_notifications_work": "pending",
    "ix_notifications_sent_at": "sent_at IS NOT NULL",
    "ix_notifications_sku_sent_at": "sent_at IS NOT NULL",
    "ix_notifications_provider_id": "provider_id IS NOT NULL",
    "ix_subscriptions_customer_id": "customer_id IS NOT NULL",
    "ix_subscriptions_segment": "segment IS NOT NULL",
}


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "partial_indexes") as database:
        yield database


def _definitions(engine: Engine) -> dict[str, str]:
    """Each index's definition as the database keeps it."""
    query = (
        "SELECT indexname, indexdef FROM pg_indexes"
        if BACKEND == "postgres"
        else "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    )
    with engine.connect() as connection:
        return {name: definition for name, definition in connection.execute(text(query))}


def test_revision_0026_makes_the_indexes_partial_and_back(scratch: tuple[str, Engine]) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0026")
    after = _definitions(engine)
    for name, predicate in PARTIAL.items():
        assert " WHERE " in after[name] and predicate in after[name], after[name]

    command.downgrade(migrations.alembic_config(url), "0025")
    before = _definitions(engine)
    for name in PARTIAL:
        assert " WHERE " not in before[name], before[name]


def test_revision_0027_folds_the_status_and_channel_index_into_the_work_index(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0027")
    after = _definitions(engine)
    assert "ix_notifications_status_channel" not in after
    work = after["ix_notifications_work"]
    assert re.search(r"status.+next_attempt_at.+channel", work), work
    assert "failed" in work and "pending" in work, work

    command.downgrade(migrations.alembic_config(url), "0026")
    before = _definitions(engine)
    assert "channel" not in before["ix_notifications_work"]
    assert "failed" not in before["ix_notifications_work"]
    assert "failed" in before["ix_notifications_status_channel"]


@pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL's planner")
async def test_the_readers_of_the_partial_indexes_still_use_them(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 400)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE notifications SET status = 'sent', sent_at = now(), "
                "provider_id = 'SM' || md5(id::text) WHERE id IN "
                "(SELECT id FROM notifications ORDER BY id LIMIT 200)"
            )
        )
        await conn.execute(text("ANALYZE notifications"))
    now = utcnow()

    def delivery_report(session: AsyncSession) -> Awaitable[bool]:
        # A provider's delivery report finds its message by the provider's id.
        return notifications.record_delivery_report(
            session, "SM0", DeliveryReport.DELIVERED, None, now
        )

    def figures(session: AsyncSession) -> Awaitable[pipeline.ScalarFigures]:
        # /metrics: what is due and since when, and the last message sent.
        return pipeline.scalar_figures(session, now)

    def counts(session: AsyncSession) -> Awaitable[list[tuple[str, str | None, int]]]:
        # /metrics: open and failed messages by status and channel.
        return pipeline.notification_counts(session)

    for reader, indexes in (
        (delivery_report, ["ix_notifications_provider_id"]),
        (figures, ["ix_notifications_work", "ix_notifications_sent_at"]),
        (counts, ["ix_notifications_work"]),
    ):
        plans = await _plans_of(runtime, reader)
        for index in indexes:
            assert any(index in plan for plan in plans), (index, plans)
    # A drain's claim (run by the driver, so not seen above): the queue's head, oldest due
    # first, from the work index.
    drain = service._first_due(False, "postgresql").compile(dialect=runtime.engine.dialect)
    values = drain.construct_params({"b_now": now, "b_limit": service.BATCH})
    parameters = tuple(values[name] for name in drain.positiontup or [])
    [plan] = await _explain_all(runtime, [(str(drain), parameters)])
    assert "ix_notifications_work" in plan, plan


async def _plans_of(runtime: Runtime, reader: Any) -> list[str]:
    """The plans of the statements ``reader(session)`` runs, with sequential scans priced
    out: an index whose predicate the statement does not imply cannot be chosen at all."""
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.transaction(runtime.sessions) as session:
            await reader(session)
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", seen)
    return await _explain_all(runtime, statements)


async def _explain_all(runtime: Runtime, statements: list[tuple[str, Any]]) -> list[str]:
    plans = []
    async with runtime.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await driver.execute("SET enable_seqscan = off")
        for statement, parameters in statements:
            rows = await driver.fetch(f"EXPLAIN {statement}", *(parameters or ()))
            plans.append("\n".join(re.sub(r"\s+", " ", row[0]) for row in rows))
        await driver.execute("RESET enable_seqscan")
    return plans
