"""The substitute message: SUBSTITUTE_AFTER_SECONDS into a shopper's wait for a sold-out
product, one message (per subscription, ever) names its substitutes in stock, each with a
tracked link of its own; an order of an offered substitute carrying the message's token is
"saved by a substitute", and every step is in the figures."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from backinstock.dispatch.models import Kind, Notification, SubstituteOffer
from backinstock.flows import substitutes
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.catalog.helpers import put_policy
from tests.catalog.test_substitutes import put, stock
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.conversions.helpers import (
    SKU,
    order_body,
    outbox_by_subscription,
    post_order,
    subscribe_by_email,
)
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import subscribe_many
from tests.workers import settle, tick

SUBSTITUTE = Kind.SUBSTITUTE.value
HOUR = 3600
LINK = re.compile(r"/r/([A-Za-z0-9_-]{44})/(\d+)")


async def _shelves(client: httpx.AsyncClient, key: str) -> None:
    """SKU-1 sold out, listing ALT-A (in stock, named per locale), ALT-B (never stocked)
    and ALT-C (in stock)."""
    names = {"zh-CN": "蓝色T恤 M", "en": "Blue T-shirt M"}
    await stock(client, key, "ALT-A", 3, product={"names": names, "url": "https://shop.example/a"})
    alt_c = {"name": "Red T-shirt L", "url": "https://shop.example/c?ref=x"}
    await stock(client, key, "ALT-C", 1, product=alt_c)
    await stock(client, key, SKU, 0)
    response = await put(client, key, {"substitutes": ["ALT-A", "ALT-B", "ALT-C"]})
    assert response.status_code == 200, response.text


async def _offers(runtime: Runtime) -> dict[str, list[str]]:
    """Subscription id → the substitutes its substitute message offers, in order."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.subscription_id, SubstituteOffer.substitute_sku)
            .join(SubstituteOffer, SubstituteOffer.notification_id == Notification.id)
            .order_by(Notification.subscription_id, SubstituteOffer.position)
        )
        found: dict[str, list[str]] = {}
        for subscription_id, substitute in rows:
            found.setdefault(str(subscription_id), []).append(substitute)
        return found


async def _funnel(client: httpx.AsyncClient, key: str, **params: str) -> dict[str, Any]:
    response = await client.get("/v1/stats/funnel", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_one_message_after_the_wait_naming_the_substitutes_in_stock_never_twice(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    start_worker(substitute_after_seconds=2 * HOUR)
    await _shelves(client, key)
    first = await subscribe_by_email(client, key, 2)
    await tick()
    clock.advance(HOUR)
    await tick()
    assert await _offers(runtime) == {}, "not before the wait is over"

    clock.advance(HOUR + 60)
    await tick()
    assert await _offers(runtime) == {sub: ["ALT-A", "ALT-C"] for sub in first}
    messages = await outbox_by_subscription(runtime, kind=SUBSTITUTE)
    assert set(messages) == set(first)
    text = messages[first[0]]
    assert "蓝色T恤 M" in text and "Red T-shirt L" in text and "ALT-B" not in text
    assert [n for _, n in LINK.findall(text)] == ["1", "2"]
    # The shopper's page links the offered substitutes through the message's links too.
    page = re.search(r"/s/([A-Za-z0-9_-]{44})", text)
    assert page is not None
    html = (await client.get(f"/s/{page.group(1)}", params={"lang": "en"})).text
    token = LINK.findall(text)[0][0]
    assert f"/r/{token}/1" in html and f"/r/{token}/2" in html

    # A later shopper waits their own time; nobody gets a second one, ever.
    body = subscription_body(sku=SKU, channel="email", contact="later@example.com")
    response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    later = [response.json()["id"]]
    clock.advance(HOUR)
    await tick()
    assert set(await _offers(runtime)) == set(first)
    clock.advance(HOUR + 60)
    await tick()
    clock.advance(30 * 24 * HOUR)
    await tick()
    assert set(await _offers(runtime)) == {*first, *later}
    assert len(await outbox_by_subscription(runtime, kind=SUBSTITUTE)) == 3
    figures = await _funnel(client, key)
    assert figures["substitute_messages_sent"] == 3
    assert figures["notified"] == 0, "not restock messages"


async def test_nothing_while_no_substitute_is_in_stock_or_the_product_is_back(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    start_worker(substitute_after_seconds=HOUR)
    # SKU-1 lists only ALT-B, never stocked; SKU-2 is in stock itself.
    assert (await put(client, key, {"substitutes": ["ALT-B"]})).status_code == 200
    await stock(client, key, "ALT-A", 2, product={"name": "Blue"})
    assert (await put(client, key, {"substitutes": ["ALT-A"]}, sku="SKU-2")).status_code == 200
    waiting = await subscribe_by_email(client, key, 2)
    in_stock = await subscribe_by_email(client, key, 2, sku="SKU-2")
    await stock(client, key, "SKU-2", 4)
    await settle()
    clock.advance(2 * HOUR)
    await tick()
    assert await _offers(runtime) == {}

    # ALT-B arrives: SKU-1's shoppers are offered it at the next tick; SKU-2's never.
    await stock(client, key, "ALT-B", 1, product={"name": "Green"})
    await tick()
    assert await _offers(runtime) == {sub: ["ALT-B"] for sub in waiting}
    assert not set(await _offers(runtime)) & set(in_stock)


async def test_sms_waits_out_quiet_hours_and_an_offer_the_restock_overtook_is_cancelled(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await _shelves(client, key)
    await stock(client, key, "SKU-2", 0)
    assert (await put(client, key, {"substitutes": ["ALT-A"]}, sku="SKU-2")).status_code == 200
    sms = await subscribe_many(client, key, 1, timezone="UTC")
    other = await subscribe_many(client, key, 1, sku="SKU-2", start=5, timezone="UTC")
    next_hour = clock.now() + timedelta(hours=1)
    window = f"{next_hour.hour:02d}:00-{(next_hour.hour + 3) % 24:02d}:00"
    start_worker(quiet_hours=window, substitute_after_seconds=HOUR)
    clock.advance(HOUR + 60)  # inside the quiet window (it starts at the hour of now + 1 h)
    await tick()
    async with runtime.sessions() as session:
        held = await session.scalars(
            select(Notification.subscription_id).where(
                Notification.kind == SUBSTITUTE, Notification.error == "quiet_hours"
            )
        )
        assert {str(sub) for sub in held} == {*sms, *other}, "SMS waits out quiet hours"
    assert await outbox_by_subscription(runtime, kind=SUBSTITUTE) == {}

    # SKU-2 is back before the quiet hours end: its shopper is told, and the offer is moot.
    await stock(client, key, "SKU-2", 5)
    await settle()
    clock.advance(3 * HOUR)
    await tick()
    sent = await outbox_by_subscription(runtime, kind=SUBSTITUTE)
    assert set(sent) == set(sms)
    assert re.search(r"仍缺货，现有替代款「蓝色T恤 M」：\S+/r/\S{44}/1 另有1款", sent[sms[0]])
    async with runtime.sessions() as session:
        cancelled = await session.scalar(
            select(Notification.error).where(
                Notification.kind == SUBSTITUTE,
                Notification.subscription_id == uuid.UUID(other[0]),
            )
        )
    assert cancelled == "back_in_stock"


async def test_clicks_and_orders_of_an_offered_substitute_are_saved_by_a_substitute(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    # A short wait: the orders below are stamped now, and the message's sent_at (on the
    # test clock) must stay within the attribution window's skew of them.
    start_worker(substitute_after_seconds=60)
    await _shelves(client, key)
    ids = await subscribe_by_email(client, key, 2)
    clock.advance(90)
    await tick()
    messages = await outbox_by_subscription(runtime, kind=SUBSTITUTE)
    token, _ = LINK.findall(messages[ids[0]])[0]

    followed = await client.get(f"/r/{token}/2")
    assert followed.status_code == 302
    assert followed.headers["location"].startswith("https://shop.example/c?ref=x&utm_source=")
    assert f"bis_token={token}" in followed.headers["location"]
    assert (await client.get(f"/r/{token}/2", params={"redirect": 0})).status_code == 204
    assert (await client.get(f"/r/{token}/1")).status_code == 302
    for hostile in (f"/r/{token}/3", "/r/" + "A" * 44 + "/1"):
        assert (await client.get(hostile)).status_code == 404, hostile
    for refused in (f"/r/{token}/0", f"/r/{token}/11", f"/r/{token}/1e0", f"/r/{token}/-1"):
        assert (await client.get(refused)).status_code == 422, refused
    async with runtime.sessions() as session:
        per_place = select(SubstituteOffer.position, func.sum(SubstituteOffer.click_count))
        rows = await session.execute(per_place.group_by(SubstituteOffer.position))
        clicks = {position: int(count) for position, count in rows}
    assert clicks == {1: 1, 2: 2}, "counted on the offer, per substitute"

    lines = [
        {"sku": "ALT-C", "quantity": 2, "unit_price": "50.00"},
        {"sku": "ALT-B", "quantity": 1, "unit_price": "9.00"},  # not offered: not in stock
        {"sku": "OTHER", "quantity": 1, "unit_price": "1.00"},
    ]
    body = {**order_body("o-1"), "items": lines, "notification_token": token}
    answer = await post_order(client, key, body)
    assert answer.status_code == 201, answer.text
    saved = answer.json()["saved_by_substitute"]
    assert [(s["sku"], s["substitute_for"], s["revenue"]) for s in saved] == [
        ("ALT-C", SKU, "100.00")
    ]
    assert saved[0]["subscription_id"] == ids[0] and answer.json()["conversions"] == []
    replay = await post_order(client, key, body)
    assert replay.status_code == 200 and replay.json() == answer.json()
    # The same substitute bought without the token: nothing saved.
    plain = await post_order(client, key, {**order_body("o-2", sku="ALT-C")})
    assert plain.json()["saved_by_substitute"] == []
    async with runtime.sessions() as session:
        statuses = await session.scalars(select(Subscription.status))
        assert set(statuses) == {"waiting"}, "a substitute bought is not a conversion"

    figures = await _funnel(client, key)
    assert figures["substitute_messages_sent"] == 2
    assert (figures["substitute_clicks"], figures["saved_by_substitute"]) == (2, 1)
    assert figures["converted"] == 0 and figures["clicked"] == 0
    assert (await _funnel(client, key, sku=SKU))["saved_by_substitute"] == 1
    assert (await _funnel(client, key, sku="ALT-C"))["saved_by_substitute"] == 0
    for metric, total in (
        ("substitute_messages_sent", 2),
        ("substitute_clicks", 2),
        ("saved_by_substitute", 1),
    ):
        series = await client.get(
            "/v1/stats/timeseries",
            params={"metric": metric, "interval": "hour", "until": _later(clock)},
            headers=bearer(key),
        )
        assert series.status_code == 200, series.text
        assert sum(p["value"] for p in series.json()["points"]) == total, metric
    csv = await client.get("/v1/stats/funnel", params={"format": "csv"}, headers=bearer(key))
    header, row = csv.text.strip().split("\r\n")
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["saved_by_substitute"] == "1" and values["substitute_clicks"] == "2"


def _later(clock: SteppingClock) -> str:
    return (clock.now() + timedelta(hours=1)).isoformat()


async def test_a_second_sweep_plans_nothing_more_and_off_plans_nothing(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await _shelves(client, key)
    ids = await subscribe_by_email(client, key, 3)
    settings = runtime.settings
    conversion = settings.conversion.model_copy(update={"substitute_after_seconds": 60})
    on = dataclasses.replace(settings, conversion=conversion)
    clock.advance(120)
    assert await substitutes.plan_due(runtime.sessions, settings, clock.now()) == [], "off"
    first = await substitutes.plan_due(runtime.sessions, on, clock.now())
    second = await substitutes.plan_due(runtime.sessions, on, clock.now())
    assert len(first) == 3 and second == []
    assert set(await _offers(runtime)) == set(ids)


async def test_the_products_rule_wins_over_the_setting(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await _shelves(client, key)
    await stock(client, key, "SKU-2", 0)
    assert (await put(client, key, {"substitutes": ["ALT-A"]}, sku="SKU-2")).status_code == 200
    on_by_rule = await subscribe_by_email(client, key, 2)
    off_by_rule = await subscribe_by_email(client, key, 2, sku="SKU-2")
    assert (await put_policy(client, key, {"substitute_after_seconds": 600})).status_code == 200
    answer = await put_policy(client, key, {"substitute_after_seconds": 0}, sku="SKU-2")
    assert answer.status_code == 200, answer.text

    clock.advance(300)
    setting_off = runtime.settings  # SUBSTITUTE_AFTER_SECONDS=0
    assert await substitutes.plan_due(runtime.sessions, setting_off, clock.now()) == []
    clock.advance(400)
    planned = await substitutes.plan_due(runtime.sessions, setting_off, clock.now())
    assert len(planned) == 2 and set(await _offers(runtime)) == set(on_by_rule)

    conversion = setting_off.conversion.model_copy(update={"substitute_after_seconds": 60})
    setting_on = dataclasses.replace(setting_off, conversion=conversion)
    assert await substitutes.plan_due(runtime.sessions, setting_on, clock.now()) == []
    assert not set(await _offers(runtime)) & set(off_by_rule)
