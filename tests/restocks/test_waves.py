"""The wave rules end to end: API → database → broker → in-process workers → dev outbox.

The workers run on the test's clock and the sweeper ticks only when a test says so: each
assertion follows a :func:`~tests.workers.settle` or :func:`~tests.workers.tick`, after which
everything due at the clock's now has run."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select

from backinstock.dispatch.models import Notification
from backinstock.flows import restock
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.restocks.helpers import outbox_count, outbox_recipients, post_level, subscribe_many
from tests.restocks.seed import seed_waiting
from tests.workers import settle, tick

# Longer than any test runs, so that only the test's clock can make a step due.
INTERVAL = 600.0


async def test_vips_first_then_registration_order_in_steps_sized_to_stock(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    standard = await subscribe_many(client, key, 30)
    vips = await subscribe_many(client, key, 5, start=100, priority="vip")
    start_worker(batch_interval_seconds=INTERVAL)

    opened = await post_level(client, key, 10, event_id="erp-1", occurred=0)
    assert opened.status_code == 202, opened.text
    first = opened.json()
    assert (first["available"], first["waiting"], first["first_wave"]) == (10, 35, 10)

    await settle()
    assert await outbox_count(runtime) == 10
    assert set(await outbox_recipients(runtime)) == set(vips) | set(standard[:5])
    clock.advance(INTERVAL * 0.9)
    await tick()
    assert await outbox_count(runtime) == 10, "the next step waits for the interval"

    clock.advance(INTERVAL * 0.1)
    await tick()
    assert await outbox_count(runtime) == 20
    assert set((await outbox_recipients(runtime))[10:]) == set(standard[5:15])

    sold_out = await post_level(client, key, 0, event_id="erp-2", occurred=60)
    assert sold_out.json()["available"] == 0
    clock.advance(INTERVAL)
    await tick()
    assert await outbox_count(runtime) == 20, "a sold-out SKU's wave stops"

    replay = await post_level(client, key, 10, event_id="erp-1", occurred=0)
    assert replay.status_code == 200
    assert replay.json()["restock_id"] == first["restock_id"]
    late = await post_level(client, key, 50, event_id="erp-0", occurred=-60)
    assert late.status_code == 202
    assert late.json()["applied"] is False and late.json()["available"] == 0
    clock.advance(INTERVAL)
    await tick()
    assert await outbox_count(runtime) == 20, "neither a replay nor a late event restocks"
    async with runtime.sessions() as session:
        statuses = list(await session.scalars(select(Wave.status)))
    assert statuses == ["closed"]


async def test_a_rise_runs_the_next_step_at_once_and_covering_stock_tells_everyone(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    ids = await subscribe_many(client, key, 12)
    start_worker(batch_interval_seconds=INTERVAL)
    await post_level(client, key, 2, occurred=0)
    await settle()
    assert await outbox_count(runtime) == 2
    rise = await post_level(client, key, 5, occurred=10, location="tmall")
    assert rise.json()["available"] == 7 and rise.json()["first_wave"] == 7
    await settle()
    assert await outbox_count(runtime) == 9, "a rise does not wait for the interval"
    await post_level(client, key, 100, occurred=20)
    await settle()
    assert await outbox_count(runtime) == 12
    assert sorted(await outbox_recipients(runtime)) == sorted(ids)
    clock.advance(INTERVAL)
    await tick()
    assert await outbox_count(runtime) == 12, "at most one message per shopper per wave"


async def test_max_notifications_over_a_subscriptions_life(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 1)
    start_worker(max_notifications=2, batch_interval_seconds=INTERVAL)
    for wave in range(3):
        await post_level(client, key, 5, occurred=wave * 100)
        await settle()
        assert await outbox_count(runtime) == min(wave + 1, 2)
        await post_level(client, key, 0, occurred=wave * 100 + 50)
    clock.advance(INTERVAL)
    await tick()
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
    await settle()
    assert await outbox_count(runtime) == 2
    page = await client.get("/v1/dev/outbox", headers={"Authorization": f"Bearer {key}"})
    items = page.json()["items"]
    assert len(items) == 2
    body = items[0]["body"]
    assert "Ann" in body and "only 2 left" in body
    assert "/r/" in body and "/s/" in body  # an SMS's "Stop" link is the shopper's page
    assert items[0]["to"].startswith("+86 138")
    assert "13800000" not in page.text


async def test_a_step_is_written_in_chunks_that_grow_and_keep_the_queue_order(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first chunk small, so that the first messages leave at once; the next ones twice
    # the last, up to the largest (here 2 -> 4 -> 8 instead of 1,000 -> ... -> 8,000).
    monkeypatch.setattr(restock, "CHUNK", 2)
    monkeypatch.setattr(restock, "LARGEST_CHUNK", 8)
    await seed_waiting(runtime, 25)
    assert (await post_level(client, api_keys["inventory"], 25)).status_code == 202
    async with runtime.sessions() as session:
        wave_id = await session.scalar(select(Wave.id))
    assert wave_id is not None
    woken: list[list[uuid.UUID]] = []
    assert await restock.run(runtime.sessions, runtime.settings, wave_id, woken.append) == 25
    assert [len(ids) for ids in woken] == [2, 4, 8, 8, 3]
    async with runtime.sessions() as session:
        in_queue_order = list(
            await session.scalars(
                select(Notification.id)
                .join(Subscription, Subscription.id == Notification.subscription_id)
                .order_by(Subscription.priority_rank, Subscription.created_at, Subscription.id)
            )
        )
    assert [i for ids in woken for i in ids] == in_queue_order
