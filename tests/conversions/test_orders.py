"""Orders end to end: a real wave through the in-process workers, then orders attributed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select

from backinstock.conversions.models import Conversion, Order
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.conftest import ClientFactory, WorkerStarter
from tests.conversions.helpers import (
    SKU,
    email,
    order_body,
    outbox_by_subscription,
    post_order,
    sent_count,
    subscribe_by_email,
    total,
    tracked_token,
)
from tests.helpers import bearer
from tests.restocks.helpers import outbox_count, post_level
from tests.workers import settle


async def _notified_wave(
    client: httpx.AsyncClient, key: str, runtime: Runtime, start_worker: WorkerStarter, n: int
) -> list[str]:
    ids = await subscribe_by_email(client, key, n)
    start_worker()
    response = await post_level(client, key, n, sku=SKU)
    assert response.status_code == 202, response.text
    await settle()
    assert (await outbox_count(runtime), await sent_count(runtime)) == (n, n)
    return ids


async def _count(runtime: Runtime, model: type) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _statuses(runtime: Runtime) -> dict[str, str]:
    async with runtime.sessions() as session:
        rows = await session.execute(select(Subscription.id, Subscription.status))
        return {str(i): s for i, s in rows}


async def test_three_orders_by_email_convert_three_and_a_replay_changes_nothing(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await _notified_wave(client, key, runtime, start_worker, 20)

    answers = []
    for i in range(3):
        body = order_body(f"o-{i}", customer={"email": email(i).upper()})
        response = await post_order(client, key, body)
        assert response.status_code == 201, response.text
        answers.append(response.json())
    assert [len(a["conversions"]) for a in answers] == [1, 1, 1]
    assert {a["conversions"][0]["subscription_id"] for a in answers} == set(ids[:3])
    assert {a["conversions"][0]["method"] for a in answers} == {"contact"}
    assert total([a["conversions"][0]["revenue"] for a in answers]) == 297
    assert answers[0]["total"] == "99.00" and answers[0]["currency"] == "CNY"

    replay = await post_order(client, key, order_body("o-0", customer={"email": email(0)}))
    assert replay.status_code == 200
    assert replay.json() == answers[0]
    # A replay with another body is still the same order: the first answer stands.
    changed = order_body("o-1", price="1.00", customer={"email": email(7)})
    assert (await post_order(client, key, changed)).json() == answers[1]

    assert await _count(runtime, Order) == 3
    assert await _count(runtime, Conversion) == 3
    funnel = (await client.get("/v1/stats/funnel", headers=bearer(key))).json()
    assert (funnel["notified"], funnel["converted"]) == (20, 3)
    assert (funnel["revenue"], funnel["currency"]) == ("297.00", "CNY")
    assert funnel["conversion_rate"] == 0.15
    statuses = await _statuses(runtime)
    assert [statuses[i] for i in ids[:3]] == ["converted"] * 3
    assert {statuses[i] for i in ids[3:]} == {"notified"}


async def test_the_tracked_link_token_wins_over_the_buyers_contact(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await _notified_wave(client, key, runtime, start_worker, 3)
    token = tracked_token((await outbox_by_subscription(runtime))[ids[2]])
    body = order_body("o-token", notification_token=token, customer={"email": email(0)})
    conversion = (await post_order(client, key, body)).json()["conversions"][0]
    assert (conversion["subscription_id"], conversion["method"]) == (ids[2], "token")
    assert conversion["channel"] == "email"


async def test_customer_id_attributes_and_the_latest_message_in_the_window_counts(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = await _notified_wave(client, key, runtime, start_worker, 2)
    body = order_body("o-cid", customer={"customer_id": "c-1", "email": "not an email"})
    conversion = (await post_order(client, key, body)).json()["conversions"][0]
    assert (conversion["subscription_id"], conversion["method"]) == (ids[1], "customer_id")


async def test_orders_outside_the_window_or_for_other_skus_convert_nobody(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    # An order stamped 8 days on: a clock that far ahead is allowed here, to reach past the
    # 7-day window without waiting for it.
    core = runtime.settings.core.model_copy(update={"max_clock_skew_seconds": 9 * 86_400})
    client = make_client(core=core)
    await _notified_wave(client, key, runtime, start_worker, 2)
    too_late = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    late = order_body("o-late", customer={"email": email(0)}, occurred_at=too_late)
    before = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    earlier = order_body("o-early", customer={"email": email(0)}, occurred_at=before)
    other = order_body("o-other", sku="SKU-OTHER", customer={"email": email(1)})
    for body in (late, earlier, other):
        response = await post_order(client, key, body)
        assert response.status_code == 201, response.text
        assert response.json()["conversions"] == []
    assert set((await _statuses(runtime)).values()) == {"notified"}


async def test_racing_requests_with_one_order_id_write_one_order(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await _notified_wave(client, key, runtime, start_worker, 1)
    body = order_body("o-race", customer={"email": email(0)})
    responses = await asyncio.gather(*(post_order(client, key, body) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201]
    assert len({r.text for r in responses}) == 1
    assert await _count(runtime, Conversion) == 1


async def test_bad_orders_get_422_in_the_one_error_shape_and_write_nothing(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["inventory"]
    bad = [
        {**order_body("o"), "currency": "cny"},
        {**order_body("o"), "items": []},
        order_body("o", price="-1"),
        order_body("o", price="1.00001"),
        {**order_body("o"), "items": [{"sku": SKU, "quantity": 0, "unit_price": "1"}]},
        {**order_body("o"), "order_id": "a\x00b"},
        {**order_body("o"), "occurred_at": "2026-11-21T10:00:00"},
        {**order_body("o"), "items": [{"sku": SKU, "quantity": 10_000, "unit_price": "1e9"}]},
    ]
    for body in bad:
        response = await post_order(client, key, body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_field"
    assert (await post_order(client, api_keys["subscribe"], order_body("o"))).status_code == 403
    assert await _count(runtime, Order) == 0
