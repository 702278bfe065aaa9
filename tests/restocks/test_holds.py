"""Held stock: the units a wave step tells shoppers about are held for them; an order with
the shopper's token consumes a hold, a sell-out ends them, and expired holds release their
units, which the wave's next step, due at once, tells the next shoppers about."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from backinstock.config import MetricsSettings
from backinstock.restocks.models import StockHold
from backinstock.runtime import Runtime
from tests.catalog.helpers import put_policy
from tests.clock import SteppingClock
from tests.conftest import ClientFactory, WorkerStarter
from tests.conversions.helpers import (
    SKU,
    order_body,
    outbox_by_subscription,
    post_order,
    subscribe_by_email,
    tracked_token,
)
from tests.helpers import bearer
from tests.ops.test_pipeline_metrics import scrape, value
from tests.restocks.helpers import outbox_count, post_level
from tests.workers import settle, tick

HOLD = 1800
# Far beyond the hold: a shopper told after the hold expired was told by the release, not
# by the step interval.
INTERVAL = 7200
# More than this test's own run time can add to the clock between two of its steps.
MARGIN = 100


async def stock(client: httpx.AsyncClient, key: str, sku: str = SKU) -> dict[str, Any]:
    response = await client.get(f"/v1/stock/{sku}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def hold_of(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"/v1/holds/{token}")


async def tokens(runtime: Runtime) -> dict[str, str]:
    """Subscription id → the token of its restock message's tracked link."""
    messages = await outbox_by_subscription(runtime)
    return {sub: tracked_token(body) for sub, body in messages.items()}


async def hold_count(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(StockHold)) or 0)


async def test_five_units_for_twelve_shoppers_two_buy_three_holds_expire_three_more_told(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await subscribe_by_email(client, key, 12)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=INTERVAL)
    assert (await post_level(client, key, 5, sku=SKU)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 5
    told = await tokens(runtime)
    assert set(told) == set(ids[:5]), "the first five in the queue are told"
    assert await stock(client, key) == {"sku": SKU, "level": 5, "held": 5, "free": 0}

    first = await hold_of(client, told[ids[0]])
    assert first.status_code == 200, first.text
    assert first.json()["sku"] == SKU
    until = datetime.fromisoformat(first.json()["until"])
    now = clock.now()
    assert now + timedelta(seconds=HOLD - MARGIN) < until <= now + timedelta(seconds=HOLD)

    # Two shoppers buy with their token: their holds are consumed.
    for n, sub in enumerate(ids[:2]):
        order = order_body(f"o-{n}", notification_token=told[sub])
        assert (await post_order(client, key, order)).status_code == 201
    assert await stock(client, key) == {"sku": SKU, "level": 5, "held": 3, "free": 2}
    assert (await hold_of(client, told[ids[0]])).status_code == 410
    assert (await hold_of(client, told[ids[2]])).status_code == 200
    assert (await post_level(client, key, 3, sku=SKU)).status_code == 202  # the shop sold 2
    assert await stock(client, key) == {"sku": SKU, "level": 3, "held": 3, "free": 0}

    clock.advance(HOLD - MARGIN)
    await tick()
    assert await outbox_count(runtime) == 5, "the holds still run: nobody else is told"
    assert (await hold_of(client, told[ids[2]])).status_code == 200

    clock.advance(MARGIN)
    await tick()  # the three holds expired: the next three are told at once
    assert await outbox_count(runtime) == 8
    told = await tokens(runtime)
    assert set(told) == set(ids[:8])
    for sub in ids[2:5]:
        gone = await hold_of(client, told[sub])
        assert gone.status_code == 410, gone.text
        assert gone.json()["error"]["code"] == "gone"
    assert await stock(client, key) == {"sku": SKU, "level": 3, "held": 3, "free": 0}
    assert (await hold_of(client, told[ids[5]])).status_code == 200

    # Sold out: every hold ends.
    assert (await post_level(client, key, 0, sku=SKU)).status_code == 202
    assert await stock(client, key) == {"sku": SKU, "level": 0, "held": 0, "free": 0}
    assert (await hold_of(client, told[ids[5]])).status_code == 410
    await tick()
    assert await outbox_count(runtime) == 8


async def test_a_products_hold_seconds_override_the_setting(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    own = 600
    assert (await put_policy(client, api_keys["admin"], {"hold_seconds": own})).status_code == 200
    ids = await subscribe_by_email(client, key, 4)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=INTERVAL)
    assert (await post_level(client, key, 2, sku=SKU)).status_code == 202
    await settle()
    told = await tokens(runtime)
    until = datetime.fromisoformat((await hold_of(client, told[ids[0]])).json()["until"])
    now = clock.now()
    assert now + timedelta(seconds=own - MARGIN) < until <= now + timedelta(seconds=own)

    clock.advance(own + MARGIN)  # past the product's hold, long before the setting's
    await tick()
    assert await outbox_count(runtime) == 4
    assert (await hold_of(client, told[ids[0]])).status_code == 410
    assert await stock(client, key) == {"sku": SKU, "level": 2, "held": 2, "free": 0}


async def test_hold_seconds_0_records_no_holds_and_steps_size_on_the_level(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await subscribe_by_email(client, key, 4)
    start_worker(hold_seconds=0, batch_interval_seconds=600)
    assert (await post_level(client, key, 2, sku=SKU)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 2
    assert await hold_count(runtime) == 0
    assert await stock(client, key) == {"sku": SKU, "level": 2, "held": 0, "free": 2}
    told = await tokens(runtime)
    assert (await hold_of(client, told[ids[0]])).status_code == 404

    clock.advance(600)
    await tick()  # the interval's step tells two more, as without holds
    assert await outbox_count(runtime) == 4
    assert await hold_count(runtime) == 0


async def test_a_forged_token_has_no_hold_and_stock_needs_an_inventory_key(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    assert (await hold_of(client, "x" * 44)).status_code == 404
    assert (await hold_of(client, "short")).status_code == 404
    refused = await client.get(f"/v1/stock/{SKU}", headers=bearer(api_keys["subscribe"]))
    assert refused.status_code == 403
    assert await stock(client, api_keys["inventory"], "NEW-SKU") == {
        "sku": "NEW-SKU",
        "level": 0,
        "held": 0,
        "free": 0,
    }


async def test_a_step_tells_as_many_new_shoppers_as_units_are_free(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await subscribe_by_email(client, key, 8)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=600)
    assert (await post_level(client, key, 3, sku=SKU)).json()["first_wave"] == 3
    await settle()
    assert await outbox_count(runtime) == 3

    clock.advance(600)
    await tick()  # the interval's step: every unit is held, nobody new is told
    assert await outbox_count(runtime) == 3
    assert await stock(client, key) == {"sku": SKU, "level": 3, "held": 3, "free": 0}

    rise = await post_level(client, key, 4, sku=SKU)
    assert rise.json()["first_wave"] == 1, "one unit is free"
    await settle()
    assert await outbox_count(runtime) == 4
    assert await stock(client, key) == {"sku": SKU, "level": 4, "held": 4, "free": 0}
    assert await hold_count(runtime) == 4


async def test_a_restocks_answer_counts_holds_on_the_services_clock_as_its_step_does(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    """The holds' time is over on the service's clock but the sweeper has not released them
    yet: the answer's ``first_wave`` counts their units free, as the step it announces."""
    key = api_keys["all"]
    await subscribe_by_email(client, key, 12)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=INTERVAL)
    assert (await post_level(client, key, 5, sku=SKU)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 5

    clock.advance(HOLD)
    more = await post_level(client, key, 6, sku=SKU, event_id="more")
    assert more.status_code == 202, more.text
    assert more.json()["first_wave"] == 6, "the 5 expired holds free their units"
    await settle()
    assert await outbox_count(runtime) == 11


async def test_metrics_show_the_units_held_and_the_holds_no_sweeper_released_yet(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    client = make_client(metrics=MetricsSettings(metrics_cache_seconds=0))  # every scrape reads
    key = api_keys["all"]
    await subscribe_by_email(client, key, 6)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=INTERVAL)
    assert (await post_level(client, key, 4, sku=SKU)).status_code == 202
    await settle()
    held = await scrape(client)
    assert (value(held, "backinstock_units_held"), value(held, "backinstock_holds_overdue")) == (
        4,
        0,
    )

    clock.advance(HOLD)  # over, and no tick yet: the sweeper has not seen them
    overdue = await scrape(client)
    assert value(overdue, "backinstock_units_held") == 0
    assert value(overdue, "backinstock_holds_overdue") == 4

    await tick()  # released; the next 2 shoppers are told, each with a unit held
    swept = await scrape(client)
    assert (value(swept, "backinstock_units_held"), value(swept, "backinstock_holds_overdue")) == (
        2,
        0,
    )
