"""A new subscription's place comes from the counts beside the queue (queue_counts, kept by
triggers on subscriptions): it is the place the queue itself gives, after shoppers entered
and left it every way there is. The suite checks the counts against the queue after every
test too (tests/conftest.py, ``assert_queue_counts_hold``)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import Update, func, insert, select, text, update

from backinstock import db, migrations
from backinstock.runtime import Runtime
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.models import QueueCount, Subscription
from tests.conftest import BACKEND, assert_queue_counts_hold
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.seed import seed_waiting
from tests.scratch_db import scratch_database
from tests.test_storefront_migrations import subscription, tables

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


async def _subscribe(
    client: httpx.AsyncClient, key: str, n: int, **fields: object
) -> dict[str, Any]:
    answer = await client.post(
        "/v1/subscriptions",
        json=subscription_body(contact=phone(n), **fields),
        headers=bearer(key),
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def _place(client: httpx.AsyncClient, key: str, sub_id: str) -> int:
    answer = await client.get(f"/v1/subscriptions/{sub_id}", headers=bearer(key))
    place: int = answer.json()["position"]
    return place


async def test_a_new_place_counts_everyone_queued_at_its_rank_or_better(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["subscribe"]
    standard = [await _subscribe(client, key, n) for n in range(6)]
    vips = [await _subscribe(client, key, 10 + n, priority="vip") for n in range(3)]
    ids = [uuid.UUID(s["id"]) for s in standard]
    async with db.transaction(runtime.sessions) as session:
        await lifecycle.mark_notified(session, ids[:4], NOW)  # told: still in the queue
        await lifecycle.convert(session, ids[0], NOW)  # bought: out
        await lifecycle.expire(session, [ids[1]], NOW)  # out
        await lifecycle.withdraw(session, [ids[2]])  # waiting again: still in
    gone = await client.delete(f"/v1/subscriptions/{standard[4]['id']}", headers=bearer(key))
    assert gone.status_code in (200, 204), gone.text
    in_queue = 6 - 3  # ids[2], ids[3], standard[5]

    newest = await _subscribe(client, key, 20)
    assert newest["position"] == len(vips) + in_queue + 1
    assert await _place(client, key, newest["id"]) == newest["position"]
    vip = await _subscribe(client, key, 21, priority="vip")
    assert vip["position"] == len(vips) + 1 == await _place(client, key, vip["id"])
    elsewhere = await _subscribe(client, key, 22, sku="ANOTHER-SKU")
    assert elsewhere["position"] == 1


async def test_thousands_seeded_told_and_expired_in_bulk(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    ids = await seed_waiting(runtime, 3000, sku="SKU-1")  # multi-row INSERT statements
    async with db.transaction(runtime.sessions) as session:
        await lifecycle.mark_notified(session, ids, NOW)  # told: still in the queue
    told = await _subscribe(client, api_keys["subscribe"], 5001, sku="SKU-1")
    assert told["position"] == 3001
    async with db.transaction(runtime.sessions) as session:
        await lifecycle.expire(session, ids, NOW)
        left = await session.scalar(select(func.sum(QueueCount.waiting)))
    assert left == 1
    newest = await _subscribe(client, api_keys["subscribe"], 5002, sku="SKU-1")
    assert newest["position"] == 2


@pytest.mark.skipif(BACKEND != "postgres", reason="concurrent writers: PostgreSQL")
async def test_concurrent_subscribes_to_one_product_keep_the_count(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["subscribe"]
    await asyncio.gather(*(_subscribe(client, key, n) for n in range(60)))
    await assert_queue_counts_hold(runtime)
    assert (await _subscribe(client, key, 99))["position"] == 61


@pytest.mark.skipif(BACKEND != "postgres", reason="concurrent writers: PostgreSQL")
async def test_no_transaction_waits_for_a_count(runtime: Runtime) -> None:
    """Two transactions take shoppers of the same two products out of the queue in
    opposite orders (two orders converting, or retention beside an order): each finds the
    other holding a count it needs and writes to another, rather than waiting for it (with
    one row per product and rank they would deadlock). A wait fails the statement."""
    first_sku = await seed_waiting(runtime, 2, sku="SKU-1")
    second_sku = await seed_waiting(runtime, 2, sku="SKU-2")

    def out(sub_id: uuid.UUID) -> Update:
        return update(Subscription).where(Subscription.id == sub_id).values(status="expired")

    async with runtime.engine.connect() as one, runtime.engine.connect() as other:
        for connection in (one, other):
            await connection.begin()
            await connection.execute(text("SET LOCAL lock_timeout = '5s'"))
        await one.execute(out(first_sku[0]))
        await other.execute(out(second_sku[0]))
        await other.execute(out(first_sku[1]))  # SKU-1's count is held by the first
        await one.execute(out(second_sku[1]))  # SKU-2's by the second
        await one.commit()
        await other.commit()
    await assert_queue_counts_hold(runtime)


def _operations_sql() -> tuple[str, list[str]]:
    """docs/operations.md's check, and its rebuild's statements inside BEGIN ... COMMIT."""
    text_ = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = text_[text_.index("## Queue counts") :]
    block = section[
        section.index("```sql") + len("```sql") : section.index("```", section.index("```sql") + 6)
    ]
    lines = [ln for ln in block.splitlines() if not ln.strip().startswith("--")]
    statements = [st.strip() for st in "\n".join(lines).split(";") if st.strip()]
    check, rebuild = statements[0], statements[1:]
    assert rebuild[0] == "BEGIN" and rebuild[-1] == "COMMIT", rebuild
    return check, rebuild[1:-1]


async def test_the_operations_guide_finds_drifted_counts_and_rebuilds_them(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    check, rebuild = _operations_sql()
    await seed_waiting(runtime, 5, sku="SKU-1")
    async with runtime.engine.begin() as connection:
        assert (await connection.exec_driver_sql(check)).all() == []
        await connection.execute(text("UPDATE queue_counts SET waiting = waiting + 7"))
        assert (await connection.exec_driver_sql(check)).all() == [("SKU-1", 1, 7)]
    async with runtime.engine.begin() as connection:
        for statement in rebuild:
            if statement.startswith("LOCK") and BACKEND != "postgres":
                continue  # as the guide says: SQLite has no LOCK TABLE
            await connection.exec_driver_sql(statement)
    async with runtime.engine.connect() as connection:
        assert (await connection.exec_driver_sql(check)).all() == []
    assert (await _subscribe(client, api_keys["subscribe"], 5001, sku="SKU-1"))["position"] == 6


def test_revision_0024_counts_the_queue_as_it_stands_and_goes_down(tmp_path: Path) -> None:
    with scratch_database(tmp_path, "queue_counts_migration") as (url, engine):
        command.upgrade(migrations.alembic_config(url), "0023")
        t = tables(engine)
        rows = [
            subscription(uuid.uuid4(), status, bytes([i]))
            for i, status in enumerate(
                ["waiting", "waiting", "notified", "pending", "converted", "waiting"]
            )
        ]
        rows[5] |= {"priority": "vip", "priority_rank": 0}
        with engine.begin() as connection:
            connection.execute(insert(t["subscriptions"]), rows)
        command.upgrade(migrations.alembic_config(url), "0024")
        count = text(
            "SELECT priority_rank, sum(waiting) FROM queue_counts WHERE sku = 'SKU-1' "
            "GROUP BY priority_rank ORDER BY priority_rank"
        )
        with engine.begin() as connection:
            assert connection.execute(count).all() == [(0, 1), (1, 3)]
            connection.execute(text("UPDATE subscriptions SET status = 'expired'"))
            assert connection.execute(count).all() == [(0, 0), (1, 0)]

        command.downgrade(migrations.alembic_config(url), "0023")
        assert "queue_counts" not in tables(engine)
        with engine.begin() as connection:  # no trigger left behind to write a missing table
            connection.execute(text("UPDATE subscriptions SET status = 'waiting'"))
            connection.execute(text("DELETE FROM subscriptions"))
