"""The store's whole story in one run, as a marketer would follow it: 5 units come back for
12 waiting shoppers; the 5 told have the units held for them; 2 buy with their token; the
other 3 holds expire and the next 3 shoppers are told at once; the SKU sells out again and
everyone still waiting gets one "sold out again" message with a coupon; the funnel shows
each of these steps, the holds among them."""

from __future__ import annotations

from backinstock.dispatch.models import Kind
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.conftest import ClientFactory, WorkerStarter
from tests.conversions.helpers import (
    SKU,
    order_body,
    outbox_by_subscription,
    post_order,
    subscribe_by_email,
)
from tests.helpers import bearer
from tests.restocks.helpers import post_level
from tests.restocks.test_holds import HOLD, INTERVAL, hold_of, stock, tokens
from tests.restocks.test_soldout_compensation import CODE
from tests.restocks.test_soldout_compensation import _client as compensating_client
from tests.restocks.test_soldout_compensation import _upload_pool as upload_pool
from tests.stats.test_funnel import funnel
from tests.workers import settle, tick


async def test_held_units_expire_to_the_next_shoppers_and_a_sell_out_compensates_the_rest(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    client = compensating_client(make_client, runtime, "coupon")  # the sell-out's request
    await upload_pool(client, key, 20)
    ids = await subscribe_by_email(client, key, 12)
    start_worker(hold_seconds=HOLD, batch_interval_seconds=INTERVAL, soldout_compensation="coupon")

    # 5 units: the first 5 are told, and the units are held for them.
    assert (await post_level(client, key, 5, sku=SKU)).status_code == 202
    await settle()
    told = await tokens(runtime)
    assert set(told) == set(ids[:5])
    assert await stock(client, key) == {"sku": SKU, "level": 5, "held": 5, "free": 0}

    # 2 buy with their token; the shop's level follows.
    for n, sub in enumerate(ids[:2]):
        order = order_body(f"o-{n}", notification_token=told[sub])
        assert (await post_order(client, key, order)).status_code == 201
    assert (await post_level(client, key, 3, sku=SKU)).status_code == 202
    assert await stock(client, key) == {"sku": SKU, "level": 3, "held": 3, "free": 0}

    # The other 3 holds expire: the next 3 are told at the next tick, not at the interval.
    clock.advance(HOLD)
    await tick()
    told = await tokens(runtime)
    assert set(told) == set(ids[:8])
    for sub in ids[2:5]:
        assert (await hold_of(client, told[sub])).status_code == 410
    figures = await funnel(client, key, sku=SKU)
    assert figures["notified"] == 8
    assert (figures["holds_placed"], figures["holds_consumed"], figures["holds_expired"]) == (
        8,
        2,
        3,
    ), "5 held, 2 bought, 3 expired and went on to 3 more, held now"

    # Sold out again: every hold ends, and each shopper still waiting (3 told who did not
    # buy, 3 told after them, 4 never told) gets one message, with a coupon of their own.
    assert (await post_level(client, key, 0, sku=SKU, event_id="zero")).status_code == 202
    await settle()
    assert await stock(client, key) == {"sku": SKU, "level": 0, "held": 0, "free": 0}
    sorry = await outbox_by_subscription(runtime, kind=Kind.COMPENSATION.value)
    assert set(sorry) == set(ids[2:])
    codes = {code for body in sorry.values() for code in CODE.findall(body)}
    assert len(codes) == 10, "a code for each, none twice"

    figures = await funnel(client, key, sku=SKU)
    assert figures["subscribed"] == 12
    assert figures["converted"] == 2
    assert figures["compensations_sent"] == 10
    assert (figures["holds_placed"], figures["holds_consumed"], figures["holds_expired"]) == (
        8,
        2,
        3,
    ), "the sell-out ended the last 3 holds: neither consumed nor expired"
    hourly = await client.get(
        "/v1/stats/timeseries",
        params={"metric": "holds_expired", "interval": "hour", "sku": SKU},
        headers=bearer(key),
    )
    assert hourly.status_code == 200, hourly.text
    assert sum(point["value"] for point in hourly.json()["points"]) == 3
    assert figures["coupons_issued"] == 10
