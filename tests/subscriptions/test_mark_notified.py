"""Telling shoppers returns where the wave's step continues: the last of them in queue
order (priority rank, then registration, then id). PostgreSQL picks it in the statement;
SQLite compares the returned keys."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import case, select, update

from backinstock import db
from backinstock.runtime import Runtime
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.models import Status, Subscription
from tests.restocks.seed import seed_waiting

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


async def test_the_last_shopper_told_in_queue_order_is_returned(runtime: Runtime) -> None:
    ids = await seed_waiting(runtime, 40, sku="SKU-1")
    async with runtime.engine.begin() as conn:
        # Ties at every level of the key: two ranks, two registration instants, ids last.
        await conn.execute(
            update(Subscription).values(
                priority_rank=case((Subscription.id.in_(ids[:10]), 0), else_=1),
                created_at=case(
                    (Subscription.id.in_(ids[::2]), datetime(2026, 12, 1, tzinfo=UTC)),
                    else_=datetime(2026, 12, 2, tzinfo=UTC),
                ),
            )
        )
    told = ids[3:31]
    async with runtime.sessions() as session:
        keys = (
            await session.execute(
                select(Subscription.priority_rank, Subscription.created_at, Subscription.id).where(
                    Subscription.id.in_(told)
                )
            )
        ).all()
    expected = max((rank, created, sub_id) for rank, created, sub_id in keys)

    async with db.transaction(runtime.sessions) as session:
        last = await lifecycle.mark_notified(session, told, NOW)

    assert last == expected
    assert last[0] == 1 and last[1] == datetime(2026, 12, 2, tzinfo=UTC)
    async with runtime.sessions() as session:
        statuses = await session.scalars(
            select(Subscription.status).where(Subscription.id.in_(told))
        )
        assert set(statuses) == {Status.NOTIFIED.value}
