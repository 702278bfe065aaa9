"""A product's own rules where they apply: its next wave step is sized with its multiplier
and schedules the step after it with its interval, its restocks answer that sizing, and its
shoppers' follow-ups come after its own delay, while other SKUs keep the settings.

The workers run on the test's clock and the sweeper ticks only when a test says so: each
assertion follows a :func:`~tests.workers.settle` or :func:`~tests.workers.tick`."""

from __future__ import annotations

from datetime import datetime

import httpx
from sqlalchemy import func, select

from backinstock.dispatch.models import Notification
from backinstock.restocks.models import StockHold
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from tests.catalog.helpers import put_policy
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.conversions.helpers import outbox_by_subscription, sent_count, subscribe_by_email
from tests.restocks.helpers import post_level, subscribe_many
from tests.workers import settle, tick

# The setting; longer than any test runs, so that only the test's clock makes a step due.
INTERVAL = 600.0
OWN_INTERVAL = 1200.0


async def told(runtime: Runtime, sku: str) -> int:
    """Restock messages of the SKU that reached the dev outbox."""
    async with runtime.sessions() as session:
        query = (
            select(func.count())
            .select_from(DevOutboxMessage)
            .join(Notification, Notification.id == DevOutboxMessage.notification_id)
            .where(Notification.sku == sku, Notification.kind == "restock")
        )
        return int(await session.scalar(query) or 0)


async def told_each(runtime: Runtime) -> tuple[int, int]:
    return await told(runtime, "SKU-A"), await told(runtime, "SKU-B")


async def test_a_skus_next_step_uses_its_new_multiplier_and_interval_and_others_keep_theirs(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 20, sku="SKU-A")
    await subscribe_many(client, key, 20, sku="SKU-B", start=100)
    start_worker(batch_interval_seconds=INTERVAL)
    for sku in ("SKU-A", "SKU-B"):
        opened = await post_level(client, key, 3, sku=sku)
        assert opened.json()["first_wave"] == 3
    await settle()
    assert await told_each(runtime) == (3, 3)

    # The marketer changes SKU-A's rules while both waves are open.
    changed = await put_policy(
        client,
        api_keys["admin"],
        {"batch_multiplier": 2, "batch_interval_seconds": OWN_INTERVAL},
        sku="SKU-A",
    )
    assert changed.status_code == 200, changed.text
    clock.advance(INTERVAL * 0.9)
    await tick()
    assert await told_each(runtime) == (3, 3), "a step already scheduled keeps its time"
    clock.advance(INTERVAL * 0.1)
    await tick()
    assert await told_each(runtime) == (3 + 6, 3 + 3), "SKU-A's step: ceil(3 × 2)"

    clock.advance(INTERVAL)
    await tick()
    assert await told_each(runtime) == (9, 9), "SKU-A's next step is OWN_INTERVAL later"
    clock.advance(OWN_INTERVAL - INTERVAL)
    await tick()
    assert await told_each(runtime) == (15, 12)

    # Back to the settings: SKU-A's next step is sized on them (its time was set before).
    assert (await put_policy(client, api_keys["admin"], {}, sku="SKU-A")).status_code == 200
    clock.advance(OWN_INTERVAL)
    await tick()
    assert await told_each(runtime) == (15 + 3, 12 + 3), "one step each: missed ones do not add"


async def test_a_restock_answers_the_sizing_of_the_skus_own_multiplier(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 10, sku="SKU-A")
    await subscribe_many(client, key, 10, sku="SKU-B", start=100)
    await put_policy(client, api_keys["admin"], {"batch_multiplier": 1.5}, sku="SKU-A")
    start_worker(batch_interval_seconds=INTERVAL)
    own = await post_level(client, key, 3, sku="SKU-A")
    default = await post_level(client, key, 3, sku="SKU-B")
    assert (own.json()["first_wave"], default.json()["first_wave"]) == (5, 3)
    await settle()
    assert await told_each(runtime) == (5, 3), "the step writes what the answer said"


FOLLOWUP_AFTER = 3600  # the setting: an hour, which only the test's clock reaches
OWN_FOLLOWUP_AFTER = 600


async def test_follow_ups_come_after_each_skus_own_delay(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    own = await subscribe_by_email(client, key, 2, sku="SKU-A")
    default = await subscribe_by_email(client, key, 2, sku="SKU-B")
    rules = {"followup_after_seconds": OWN_FOLLOWUP_AFTER}
    assert (await put_policy(client, api_keys["admin"], rules, sku="SKU-A")).status_code == 200
    start_worker(followup_after_seconds=FOLLOWUP_AFTER)
    for sku in ("SKU-A", "SKU-B"):
        await post_level(client, key, 2, sku=sku)
    await settle()
    assert await sent_count(runtime) == 4

    clock.advance(OWN_FOLLOWUP_AFTER - 60)
    await tick()
    assert await outbox_by_subscription(runtime, kind="followup") == {}
    clock.advance(60)
    await tick()
    assert set(await outbox_by_subscription(runtime, kind="followup")) == set(own)

    clock.advance(FOLLOWUP_AFTER - OWN_FOLLOWUP_AFTER - 60)
    await tick()
    assert set(await outbox_by_subscription(runtime, kind="followup")) == set(own)
    clock.advance(60)
    await tick()
    assert set(await outbox_by_subscription(runtime, kind="followup")) == set(own + default)
    clock.advance(FOLLOWUP_AFTER)
    await tick()
    assert len(await outbox_by_subscription(runtime, kind="followup")) == 4, "one each, ever"


async def test_a_skus_new_multiplier_and_hold_time_apply_from_its_next_step_only(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    """The marketer's change mid-wave: SKU-A's next step tells twice its free units and
    holds them for its own time; SKU-B keeps the settings' multiplier and hold time."""
    key, setting_hold, own_hold = api_keys["all"], 1800, 600
    await subscribe_many(client, key, 20, sku="SKU-A")
    await subscribe_many(client, key, 20, sku="SKU-B", start=100)
    start_worker(batch_interval_seconds=INTERVAL, hold_seconds=setting_hold)
    for sku in ("SKU-A", "SKU-B"):
        assert (await post_level(client, key, 3, sku=sku, event_id=f"{sku}-3")).status_code == 202
    await settle()
    assert await told_each(runtime) == (3, 3)

    rules = {"batch_multiplier": 2, "hold_seconds": own_hold}
    assert (await put_policy(client, api_keys["admin"], rules, sku="SKU-A")).status_code == 200
    answers = [
        (await post_level(client, key, 6, sku=sku, event_id=f"{sku}-6")).json()["first_wave"]
        for sku in ("SKU-A", "SKU-B")
    ]
    assert answers == [6, 3], "3 free units each: × 2 for SKU-A, × 1 for SKU-B"
    await settle()
    assert await told_each(runtime) == (3 + 6, 3 + 3)
    now = clock.now()
    held_for = {
        sku: (until - now).total_seconds()
        for sku, until in (await hold_times(runtime, step=2)).items()
    }
    # The clock steps on with the test's own work: a little less than each hold time is left.
    assert own_hold - 100 < held_for["SKU-A"] <= own_hold
    assert setting_hold - 100 < held_for["SKU-B"] <= setting_hold

    # SKU-A's 6 new holds expire; its first 3 shoppers' (the setting's time) still run: of
    # its 6 units 3 are free, and its next step, due at once, tells 3 × 2. SKU-B's holds
    # all run, and its step is not due.
    clock.advance(own_hold)
    await tick()
    assert await told_each(runtime) == (15, 6)


async def hold_times(runtime: Runtime, step: int) -> dict[str, datetime]:
    """Each SKU's hold time for the messages of that step (one value per step and SKU)."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(StockHold.sku, func.min(StockHold.until), func.max(StockHold.until))
            .join(Notification, Notification.id == StockHold.notification_id)
            .where(Notification.step == step)
            .group_by(StockHold.sku)
        )
        times = {}
        for sku, earliest, latest in rows:
            assert earliest == latest, "one chunk: one time"
            times[sku] = earliest
        return times
