"""Coupon pools, generated codes, follow-ups and redemption."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid

import httpx
from sqlalchemy import func, select

from backinstock import db
from backinstock.coupons import service as coupons
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.conversions.helpers import (
    SKU,
    email,
    order_body,
    outbox_by_subscription,
    post_order,
    sent_count,
    subscribe_by_email,
)
from tests.helpers import bearer
from tests.restocks.helpers import outbox_count, post_level
from tests.workers import settle, tick


async def _upload(
    client: httpx.AsyncClient, key: str, codes: list[str], **extra: object
) -> httpx.Response:
    body = {"name": "autumn", "codes": codes, **extra}
    return await client.post("/v1/coupons/pools", json=body, headers=bearer(key))


async def test_pools_are_uploaded_whole_or_not_at_all(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    admin = api_keys["admin"]
    created = await _upload(client, admin, ["A-1", "A-2", "A-3"], description="10% off")
    assert created.status_code == 201, created.text
    pool = created.json()
    assert (pool["total"], pool["issued"], pool["available"]) == (3, 0, 3)
    fetched = await client.get(f"/v1/coupons/pools/{pool['id']}", headers=bearer(admin))
    assert fetched.json() == pool

    assert (await _upload(client, admin, ["B-1"])).status_code == 409  # the name is taken
    clash = await _upload(client, admin, ["B-1", "A-2"], name="winter")
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "duplicate_codes"
    repeated = await _upload(client, admin, ["C-1", "C-1"], name="spring")
    assert repeated.status_code == 422
    bad = await _upload(client, admin, ["has space"], name="summer")
    assert bad.status_code == 422
    assert (await _upload(client, api_keys["stats"], ["D-1"], name="x")).status_code == 403
    missing = await client.get(f"/v1/coupons/pools/{uuid.uuid4()}", headers=bearer(admin))
    assert missing.status_code == 404
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Coupon)) == 3


def test_generated_codes_use_the_prefix_and_an_unambiguous_alphabet() -> None:
    codes = {coupons.generate_code("BIS-") for _ in range(2000)}
    assert len(codes) == 2000
    for code in codes:
        assert re.fullmatch(r"BIS-[2-9A-HJKMNP-TV-Z]{8}", code), code


async def _issue(runtime: Runtime, sub_id: uuid.UUID) -> str:
    async with db.transaction(runtime.sessions) as session:
        return await coupons.issue(
            session,
            "GEN-",
            subscription_id=sub_id,
            notification_id=None,
            sku=SKU,
            channel="email",
            now=db.utcnow(),
        )


async def test_concurrent_workers_never_hand_out_a_code_twice(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    codes = [f"P-{i:03d}" for i in range(30)]
    assert (await _upload(client, api_keys["admin"], codes)).status_code == 201
    subs = [uuid.UUID(s) for s in await subscribe_by_email(client, api_keys["all"], 40)]
    # Separate engines are separate connections: on PostgreSQL they really run at once.
    engines = [db.create_engine(runtime.settings.core.database_url) for _ in range(4)]
    try:
        rts = [dataclasses.replace(runtime, sessions=db.sessionmaker(e)) for e in engines]
        issued = await asyncio.gather(*(_issue(rts[i % 4], s) for i, s in enumerate(subs)))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(set(issued)) == 40
    assert sorted(c for c in issued if c.startswith("P-")) == codes, "the pool is used first"
    assert sum(c.startswith("GEN-") for c in issued) == 10


FOLLOWUP_AFTER = 3600  # an hour: only the test's clock gets there


def _code(body: str) -> str:
    match = re.search(r"(POOL-\d|BIS-[2-9A-Z]{8})", body)
    assert match, body
    return match.group(1)


async def test_shoppers_who_did_not_buy_get_exactly_one_coupon_and_buyers_none(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await _upload(client, key, ["POOL-1", "POOL-2"], description="10% off")
    ids = await subscribe_by_email(client, key, 5)
    start_worker(followup_after_seconds=FOLLOWUP_AFTER)
    await post_level(client, key, 5, sku=SKU)
    await settle()
    assert (await outbox_count(runtime), await sent_count(runtime)) == (5, 5)
    for i in range(2):  # two shoppers buy before any follow-up is due
        await post_order(client, key, order_body(f"o-{i}", customer={"email": email(i)}))

    clock.advance(FOLLOWUP_AFTER - 60)
    await tick()
    assert await outbox_count(runtime) == 5, "no follow-up before FOLLOWUP_AFTER_SECONDS"
    clock.advance(60)
    await tick()
    assert await outbox_count(runtime) == 8
    clock.advance(FOLLOWUP_AFTER)
    await tick()  # a later tick: still one each
    assert await outbox_count(runtime) == 8
    followups = await outbox_by_subscription(runtime, kind="followup")
    assert set(followups) == set(ids[2:])
    codes = [_code(body) for body in followups.values()]
    assert sorted(c for c in codes if c.startswith("POOL-")) == ["POOL-1", "POOL-2"]
    assert sum(c.startswith("BIS-") for c in codes) == 1, "the pool ran out: one generated"
    assert "10% off" in followups[ids[2]] or "10% off" in followups[ids[3]]
    async with runtime.sessions() as session:
        kinds = list(await session.scalars(select(Notification.kind)))
    assert sorted(kinds) == ["followup"] * 3 + ["restock"] * 5

    # The coupon in an order: redeemed, and the shopper converts (even via another SKU).
    holder = ids[4]
    code = next(c for c, s in zip(codes, followups, strict=True) if s == holder)
    body = order_body("o-coupon", sku="SKU-OTHER", price="50.00", coupon_code=code)
    answer = (await post_order(client, key, body)).json()
    assert answer["coupon"] == {"code": code, "status": "redeemed"}
    assert [(c["subscription_id"], c["method"], c["revenue"]) for c in answer["conversions"]] == [
        (holder, "coupon", "50.00")
    ]
    again = await post_order(client, key, order_body("o-coupon-2", coupon_code=code))
    assert again.json()["coupon"]["status"] == "already_redeemed"
    assert again.json()["conversions"] == []
    unknown = await post_order(client, key, order_body("o-coupon-3", coupon_code="NOPE-1"))
    assert unknown.json()["coupon"]["status"] == "unknown"
    funnel = (await client.get("/v1/stats/funnel", headers=bearer(key))).json()
    assert (funnel["coupons_issued"], funnel["coupons_redeemed"]) == (3, 1)
    assert (funnel["notified"], funnel["converted"]) == (5, 3), "followups are not restocks"


async def test_no_follow_up_while_the_sku_is_sold_out(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await subscribe_by_email(client, key, 2)
    start_worker(followup_after_seconds=FOLLOWUP_AFTER)
    await post_level(client, key, 2, sku=SKU, occurred=0)
    await settle()
    assert await sent_count(runtime) == 2
    await post_level(client, key, 0, sku=SKU, occurred=10)
    clock.advance(FOLLOWUP_AFTER)
    await tick()
    assert await outbox_by_subscription(runtime, kind="followup") == {}
    async with runtime.sessions() as session:
        decided = await session.scalar(
            select(func.count()).where(Notification.followed_up_at.is_not(None))
        )
    assert decided == 2, "each restock message is decided once"
