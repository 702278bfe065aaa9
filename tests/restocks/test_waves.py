"""The wave rules end to end: API → database → broker → in-process workers → dev outbox."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import select

from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.restocks.helpers import (
    outbox_count,
    outbox_recipients,
    post_level,
    subscribe_many,
    wait_for_outbox,
)

INTERVAL = 2.0


async def test_vips_first_then_registration_order_in_steps_sized_to_stock(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    standard = await subscribe_many(client, key, 30)
    vips = await subscribe_many(client, key, 5, start=100, priority="vip")
    start_worker(batch_interval_seconds=INTERVAL)

    opened = await post_level(client, key, 10, event_id="erp-1", occurred=0)
    assert opened.status_code == 202, opened.text
    first = opened.json()
    assert (first["available"], first["waiting"], first["first_wave"]) == (10, 35, 10)

    assert await wait_for_outbox(runtime, 10) == 10
    assert set(await outbox_recipients(runtime)) == set(vips) | set(standard[:5])
    await asyncio.sleep(INTERVAL / 3)
    assert await outbox_count(runtime) == 10, "the next step waits for the interval"

    assert await wait_for_outbox(runtime, 20, within=INTERVAL + 10) == 20
    assert set((await outbox_recipients(runtime))[10:]) == set(standard[5:15])

    sold_out = await post_level(client, key, 0, event_id="erp-2", occurred=60)
    assert sold_out.json()["available"] == 0
    await asyncio.sleep(INTERVAL + 1.5)
    assert await outbox_count(runtime) == 20, "a sold-out SKU's wave stops"

    replay = await post_level(client, key, 10, event_id="erp-1", occurred=0)
    assert replay.status_code == 200
    assert replay.json()["restock_id"] == first["restock_id"]
    late = await post_level(client, key, 50, event_id="erp-0", occurred=-60)
    assert late.status_code == 202
    assert late.json()["applied"] is False and late.json()["available"] == 0
    await asyncio.sleep(1.5)
    assert await outbox_count(runtime) == 20, "neither a replay nor a late event restocks"
    async with runtime.sessions() as session:
        statuses = list(await session.scalars(select(Wave.status)))
    assert statuses == ["closed"]


async def test_a_rise_runs_the_next_step_at_once_and_covering_stock_tells_everyone(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await subscribe_many(client, key, 12)
    start_worker(batch_interval_seconds=600)
    await post_level(client, key, 2, occurred=0)
    assert await wait_for_outbox(runtime, 2) == 2
    rise = await post_level(client, key, 5, occurred=10, location="tmall")
    assert rise.json()["available"] == 7 and rise.json()["first_wave"] == 7
    assert await wait_for_outbox(runtime, 9) == 9
    await post_level(client, key, 100, occurred=20)
    assert await wait_for_outbox(runtime, 12) == 12
    assert sorted(await outbox_recipients(runtime)) == sorted(ids)
    await asyncio.sleep(1.0)
    assert await outbox_count(runtime) == 12, "at most one message per shopper per wave"


async def test_max_notifications_over_a_subscriptions_life(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 1)
    start_worker(max_notifications=2)
    for wave in range(3):
        await post_level(client, key, 5, occurred=wave * 100)
        await asyncio.sleep(0.2)
        await wait_for_outbox(runtime, min(wave + 1, 2), within=10)
        await post_level(client, key, 0, occurred=wave * 100 + 50)
    await asyncio.sleep(1.5)
    assert await outbox_count(runtime) == 2


async def test_messages_carry_product_links_and_scarcity(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 5, locale="en", name="Ann")
    start_worker()
    await post_level(client, key, 2)
    assert await wait_for_outbox(runtime, 2) == 2
    page = await client.get("/v1/dev/outbox", headers={"Authorization": f"Bearer {key}"})
    items = page.json()["items"]
    assert len(items) == 2
    body = items[0]["body"]
    assert "Ann" in body and "only 2 left" in body
    assert "/r/" in body and "/u/" in body
    assert items[0]["to"].startswith("+86 138")
    assert "13800000" not in page.text
