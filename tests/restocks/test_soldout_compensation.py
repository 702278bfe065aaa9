"""Sold-out compensation: when a wave closes because the SKU sold out again, shoppers still
in its queue (never told in the wave, or told and not bought) get one "sold out again"
message per wave, stating their place, with a pool coupon for ``coupon``."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from backinstock import db
from backinstock.config import SoldoutCompensation
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Kind, Notification
from backinstock.flows import restock
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from tests.catalog.helpers import put_policy
from tests.clock import SteppingClock
from tests.conftest import BACKEND, ClientFactory, WorkerStarter
from tests.conversions.helpers import (
    SKU,
    email,
    order_body,
    outbox_by_subscription,
    post_order,
    subscribe_by_email,
)
from tests.helpers import bearer
from tests.restocks.helpers import outbox_count, post_level, subscribe_many
from tests.waiting import eventually
from tests.workers import settle, tick

COMPENSATION = Kind.COMPENSATION.value
CODE = re.compile(r"SORRY-\d{2}")


def _client(make_client: ClientFactory, runtime: Runtime, mode: str) -> httpx.AsyncClient:
    """The API with SOLDOUT_COMPENSATION set to ``mode`` (the sell-out runs in the request)."""
    conversion = runtime.settings.conversion.model_copy(
        update={"soldout_compensation": SoldoutCompensation(mode)}
    )
    return make_client(conversion=conversion)


async def _upload_pool(client: httpx.AsyncClient, key: str, n: int) -> None:
    body: dict[str, Any] = {
        "name": "sorry",
        "description": "5% off",
        "codes": [f"SORRY-{i:02d}" for i in range(n)],
    }
    response = await client.post("/v1/coupons/pools", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text


async def _places(runtime: Runtime) -> dict[str, int | None]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.subscription_id, Notification.place).where(
                Notification.kind == COMPENSATION
            )
        )
        return {str(sub_id): place for sub_id, place in rows}


async def _coupons_issued(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        query = select(func.count()).where(Coupon.issued_at.is_not(None))
        return int(await session.scalar(query) or 0)


async def _restock_then_sell_out(
    client: httpx.AsyncClient, key: str, runtime: Runtime, *, told: int
) -> None:
    assert (await post_level(client, key, told, sku=SKU)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == told


async def test_with_coupon_everyone_still_in_the_queue_gets_one_message_and_a_distinct_code(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    client = _client(make_client, runtime, "coupon")
    await _upload_pool(client, key, 20)
    ids = await subscribe_by_email(client, key, 12)
    start_worker(soldout_compensation="coupon")
    await _restock_then_sell_out(client, key, runtime, told=5)
    for i in range(2):  # two of the five told buy; three told do not
        await post_order(client, key, order_body(f"o-{i}", customer={"email": email(i)}))

    sold_out = await post_level(client, key, 0, sku=SKU, event_id="erp-zero", occurred=60)
    assert sold_out.status_code == 202, sold_out.text
    await settle()
    messages = await outbox_by_subscription(runtime, kind=COMPENSATION)
    # The 3 told who did not buy and the 7 never told; not the 2 buyers.
    assert set(messages) == set(ids[2:])
    codes = {sub_id: CODE.findall(body) for sub_id, body in messages.items()}
    assert all(len(found) == 1 for found in codes.values()), codes
    assert len({found[0] for found in codes.values()}) == 10, "each code to one shopper"
    # Each keeps their place, stated in the message: the queue without the buyers.
    places = await _places(runtime)
    assert [places[sub_id] for sub_id in ids[2:]] == list(range(1, 11))
    for place, sub_id in enumerate(ids[2:], start=1):
        assert f"10人中的第{place}位" in messages[sub_id]
        assert "5% off" in messages[sub_id]

    # Sold out again, the same event replayed, the wave closed again: nothing more.
    again = await post_level(client, key, 0, sku=SKU, event_id="erp-zero-2", occurred=120)
    assert again.status_code == 202
    replay = await post_level(client, key, 0, sku=SKU, event_id="erp-zero", occurred=60)
    assert replay.status_code == 200
    async with db.transaction(runtime.sessions) as session:
        wave_id = await session.scalar(select(Wave.id))
        assert wave_id is not None
        assert await restock.sell_out(session, runtime.settings, wave_id, db.utcnow()) == []
    await settle()
    assert await outbox_count(runtime) == 5 + 10
    assert await _coupons_issued(runtime) == 10

    funnel = (await client.get("/v1/stats/funnel", headers=bearer(key))).json()
    assert (funnel["compensations_sent"], funnel["coupons_issued"]) == (10, 10)
    assert funnel["notified"] == 5, "compensations are not restock messages"
    series = await client.get(
        "/v1/stats/timeseries",
        params={"metric": "compensations_sent", "interval": "hour"},
        headers=bearer(key),
    )
    assert series.status_code == 200, series.text
    assert sum(point["value"] for point in series.json()["points"]) == 10


async def test_when_the_pool_runs_dry_the_rest_go_without_a_coupon(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    client = _client(make_client, runtime, "coupon")
    await _upload_pool(client, key, 3)
    ids = await subscribe_by_email(client, key, 6)
    start_worker(soldout_compensation="coupon")
    await _restock_then_sell_out(client, key, runtime, told=2)
    assert (await post_level(client, key, 0, sku=SKU, occurred=60)).status_code == 202
    await settle()
    messages = await outbox_by_subscription(runtime, kind=COMPENSATION)
    assert set(messages) == set(ids)
    with_code = [sub_id for sub_id in ids if CODE.search(messages[sub_id])]
    assert with_code == ids[:3], "the first in line get the codes there are"
    assert not any("优惠券" in messages[sub_id] for sub_id in ids[3:])
    assert await _coupons_issued(runtime) == 3


async def test_message_sends_no_coupon_and_off_sends_nothing(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    client = _client(make_client, runtime, "message")
    await _upload_pool(client, key, 20)
    ids = await subscribe_by_email(client, key, 12)
    other = await subscribe_by_email(client, key, 3, sku="SKU-OFF")
    start_worker(soldout_compensation="message")
    await _restock_then_sell_out(client, key, runtime, told=5)
    assert (await post_level(client, key, 0, sku=SKU, occurred=60)).status_code == 202
    await settle()
    messages = await outbox_by_subscription(runtime, kind=COMPENSATION)
    assert set(messages) == set(ids)
    assert not any(CODE.search(body) for body in messages.values())
    assert await _coupons_issued(runtime) == 0
    assert "12人中的第1位" in messages[ids[0]]

    # The same SKU's next wave under "off": nothing.
    off = _client(make_client, runtime, "off")
    assert (await post_level(off, key, 3, sku="SKU-OFF", occurred=60)).status_code == 202
    await settle()
    assert (await post_level(off, key, 0, sku="SKU-OFF", occurred=120)).status_code == 202
    await settle()
    assert set(await outbox_by_subscription(runtime, kind=COMPENSATION)) == set(ids)
    async with runtime.sessions() as session:
        kinds = await session.execute(
            select(Notification.kind, func.count())
            .where(Notification.subscription_id.in_([uuid.UUID(i) for i in other]))
            .group_by(Notification.kind)
        )
        assert dict(kinds.all()) == {"restock": 3}


async def test_the_products_rule_wins_over_the_setting(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    client = _client(make_client, runtime, "off")
    assert (await put_policy(client, key, {"soldout_compensation": "message"})).status_code == 200
    quiet = "SKU-QUIET"
    answer = await put_policy(client, key, {"soldout_compensation": "off"}, sku=quiet)
    assert answer.status_code == 200, answer.text
    told = await subscribe_by_email(client, key, 4)
    untold = await subscribe_by_email(client, key, 4, sku=quiet)
    start_worker(soldout_compensation="coupon")
    await _restock_then_sell_out(client, key, runtime, told=2)
    assert (await post_level(client, key, 0, sku=SKU, occurred=60)).status_code == 202
    await settle()
    assert set(await outbox_by_subscription(runtime, kind=COMPENSATION)) == set(told)

    on = _client(make_client, runtime, "coupon")  # the setting says coupon; the SKU says off
    assert (await post_level(on, key, 1, sku=quiet, occurred=60)).status_code == 202
    await settle()
    assert (await post_level(on, key, 0, sku=quiet, occurred=120)).status_code == 202
    await settle()
    compensated = set(await outbox_by_subscription(runtime, kind=COMPENSATION))
    assert compensated == set(told) and not compensated & set(untold)
    assert await _coupons_issued(runtime) == 0


async def test_a_wave_sold_out_before_its_step_tells_everyone_in_queue_order_quiet_hours_kept(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    client = _client(make_client, runtime, "message")
    sms = await subscribe_many(client, key, 3, sku=SKU, timezone="UTC")
    vip = await subscribe_many(client, key, 1, sku=SKU, start=10, timezone="UTC", priority="vip")
    mail = await subscribe_by_email(client, key, 1)
    # No worker yet: the wave opens, and sells out before its first step is written.
    assert (await post_level(client, key, 5, sku=SKU)).status_code == 202
    assert (await post_level(client, key, 0, sku=SKU, occurred=60)).status_code == 202
    places = await _places(runtime)
    assert [places[sub_id] for sub_id in vip + sms + mail] == [1, 2, 3, 4, 5]

    this_hour = clock.now().replace(minute=0, second=0, microsecond=0)
    window = f"{this_hour.hour:02d}:00-{(this_hour.hour + 2) % 24:02d}:00"
    start_worker(quiet_hours=window, soldout_compensation="message")
    await settle()
    assert set(await outbox_by_subscription(runtime, kind=COMPENSATION)) == set(mail)
    async with runtime.sessions() as session:
        held = await session.scalars(
            select(Notification.subscription_id).where(Notification.error == "quiet_hours")
        )
        assert {str(sub_id) for sub_id in held} == set(vip + sms), "SMS waits out quiet hours"

    clock.advance(2 * 3600 + runtime.settings.waves.stale_after_seconds)
    await tick()
    assert set(await outbox_by_subscription(runtime, kind=COMPENSATION)) == set(vip + sms + mail)
    assert await outbox_count(runtime) == 5, "nobody was told it was back"


@pytest.mark.skipif(BACKEND != "postgres", reason="concurrent writers: SQLite has one at a time")
async def test_a_follow_up_coupon_committed_meanwhile_leaves_that_shopper_out_not_the_sell_out(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    """A follow-up hands a shopper a coupon while the sell-out's compensation hands out
    codes: the shopper's one-coupon key refuses the compensation's statement when the
    follow-up commits. The sell-out still succeeds, every other shopper still gets a code,
    and that shopper keeps the follow-up's one."""
    key = api_keys["all"]
    client = _client(make_client, runtime, "coupon")
    await _upload_pool(client, key, 20)
    ids = await subscribe_by_email(client, key, 4)
    start_worker(soldout_compensation="coupon")
    await _restock_then_sell_out(client, key, runtime, told=2)
    racer = uuid.UUID(ids[0])

    async with runtime.engine.connect() as other:  # the follow-up's transaction, open
        await other.begin()
        await other.execute(
            update(Coupon)
            .where(Coupon.code == "SORRY-19")
            .values(subscription_id=racer, sku=SKU, issued_at=db.utcnow())
        )
        sold_out = asyncio.create_task(
            post_level(client, key, 0, sku=SKU, event_id="erp-zero", occurred=60)
        )
        await eventually(lambda: _waits_on_a_lock(runtime), 30, "the sell-out meets the key")
        await other.commit()
        response = await sold_out
    assert response.status_code == 202, response.text

    async with runtime.sessions() as session:
        holders = dict(
            (
                await session.execute(
                    select(Coupon.subscription_id, Coupon.code).where(
                        Coupon.subscription_id.is_not(None)
                    )
                )
            ).all()
        )
    assert holders[racer] == "SORRY-19", "the follow-up's code, and no second one"
    assert set(holders) == {uuid.UUID(i) for i in ids}, "everyone else got a code"
    assert len(set(holders.values())) == 4
    await settle()
    assert set(await outbox_by_subscription(runtime, kind=COMPENSATION)) == set(ids)


async def _waits_on_a_lock(runtime: Runtime) -> bool:
    async with runtime.engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)
