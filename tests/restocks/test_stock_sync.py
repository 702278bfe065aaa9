"""A catalogue's stock levels in one request (``POST /v1/restocks/batch``): each event means
what it means alone (idempotent per location and event id, the latest ``occurred_at``
wins), gets its own answer, and fails alone; each SKU's wave moves once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backinstock.catalog.models import Product
from backinstock.restocks.models import RestockEvent, Wave, WaveStatus
from backinstock.restocks.schemas import MAX_BATCH_LEVELS, MAX_LEVEL
from backinstock.runtime import Runtime
from tests.catalog.helpers import put_policy
from tests.conftest import WorkerStarter
from tests.helpers import bearer
from tests.restocks.helpers import at, outbox_count, post_level, subscribe_many
from tests.workers import settle

CONTACT_LIKE = "+8613800138000"


def level(sku: str, available: int, *, occurred: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": extra.pop("event_id", uuid.uuid4().hex),
        "sku": sku,
        "available": available,
        "location": extra.pop("location", "main"),
        "occurred_at": at(occurred),
        **extra,
    }


async def post_batch(client: httpx.AsyncClient, key: str, levels: list[Any]) -> dict[str, Any]:
    response = await client.post("/v1/restocks/batch", json={"levels": levels}, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert [r["index"] for r in body["results"]] == list(range(len(levels)))
    return body


async def open_waves(runtime: Runtime) -> dict[str, int]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Wave.sku, Wave.level).where(Wave.status == WaveStatus.OPEN)
        )
        return {sku: level for sku, level in rows}


async def test_a_sync_opens_the_waves_of_the_skus_back_in_stock_and_tells_who_a_step_would(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["inventory"]
    for n, sku in enumerate(("A", "B", "C")):
        await subscribe_many(client, api_keys["all"], 3, sku=sku, start=10 * n)
    start_worker()
    levels = [
        level("A", 2),
        level("B", 0),
        level("C", 1, location="main"),
        level("C", 1, location="tmall"),
    ]
    body = await post_batch(client, key, levels)
    assert (body["recorded"], body["replayed"], body["refused"]) == (4, 0, 0)
    answers = [r["result"] for r in body["results"]]
    assert [r["status"] for r in body["results"]] == [202] * 4
    assert [(a["sku"], a["available"], a["first_wave"]) for a in answers] == [
        ("A", 2, 2),
        ("B", 0, 0),
        ("C", 2, 0),  # C's wave moved once, on its last applied event
        ("C", 2, 2),
    ]
    assert all(a["waiting"] == 3 and a["applied"] for a in answers)
    assert await open_waves(runtime) == {"A": 2, "C": 2}
    await settle()
    assert await outbox_count(runtime) == 4

    # The same request again: every event is a replay with its stored answer; nothing moves.
    again = await post_batch(client, key, levels)
    assert (again["recorded"], again["replayed"]) == (0, 4)
    assert [r["status"] for r in again["results"]] == [200] * 4
    assert [r["result"] for r in again["results"]] == answers
    await settle()
    assert await outbox_count(runtime) == 4


async def test_events_apply_in_request_order_and_the_latest_occurred_at_wins(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["inventory"]
    assert (await post_level(client, key, 3, sku="A", occurred=10)).status_code == 202
    body = await post_batch(
        client,
        key,
        [
            level("A", 7, occurred=5),  # older than the stored level: recorded, not applied
            level("A", 4, occurred=20),
            level("A", 9, occurred=15),  # older than the one before it in the request
            level("A", 6, occurred=20),  # as new as it: applied, as it would be alone
        ],
    )
    results = [r["result"] for r in body["results"]]
    assert [r["applied"] for r in results] == [False, True, False, True]
    assert {r["available"] for r in results} == {6}
    stock = await client.get("/v1/stock/A", headers=bearer(key))
    assert stock.json()["level"] == 6


async def test_a_level_that_comes_and_goes_within_a_request_opens_no_wave(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["inventory"]
    await subscribe_many(client, api_keys["all"], 2, sku="A")
    start_worker()
    body = await post_batch(client, key, [level("A", 5, occurred=1), level("A", 0, occurred=2)])
    assert [r["result"]["first_wave"] for r in body["results"]] == [0, 0]
    assert await open_waves(runtime) == {}
    await settle()
    assert await outbox_count(runtime) == 0


async def test_a_sync_that_sells_a_sku_out_closes_its_wave(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["inventory"]
    await subscribe_many(client, api_keys["all"], 4, sku="A")
    start_worker(batch_interval_seconds=3600)
    assert (await post_level(client, key, 1, sku="A", occurred=1)).status_code == 202
    await settle()
    assert await open_waves(runtime) == {"A": 1}
    body = await post_batch(client, key, [level("A", 0, occurred=2), level("B", 0, occurred=2)])
    assert [r["status"] for r in body["results"]] == [202, 202]
    assert await open_waves(runtime) == {}


async def test_a_repeat_within_the_request_gets_its_first_occurrences_answer(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    same = level("A", 2, event_id="erp-1")
    body = await post_batch(client, api_keys["inventory"], [same, {**same, "available": 9}])
    first, repeat = body["results"]
    assert (first["status"], repeat["status"]) == (202, 200)
    assert repeat["result"] == first["result"]
    assert first["result"]["available"] == 2


HOSTILE: list[tuple[Any, str]] = [
    ({**level("A", 1), "event_id": "e\x00vil"}, "levels.{i}.event_id"),
    ({**level("A", 1), "sku": "A\r\nX-Injected: 1"}, "levels.{i}.sku"),
    ({**level("A", 1), "location": "\ud800"}, "levels.{i}.location"),
    ({**level("A", 1), "available": -1}, "levels.{i}.available"),
    ({**level("A", 1), "available": "3"}, "levels.{i}.available"),
    ({**level("A", 1), "available": MAX_LEVEL + 1}, "levels.{i}.available"),
    ({**level("A", 1), "occurred_at": "9999-12-31T23:59:59Z"}, "levels.{i}.occurred_at"),
    ({**level("A", 1), "colour": CONTACT_LIKE}, "levels.{i}.colour"),
    ({**level("A", 1), "event_id": "x" * 129}, "levels.{i}.event_id"),
    ({**level("A", 1), "product": {"url": "javascript:alert(1)"}}, "levels.{i}.product.url"),
    (42, "levels.{i}"),
    ([level("A", 1)], "levels.{i}"),
]


async def test_each_bad_event_fails_alone_with_its_own_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["inventory"]
    good = [level("G", 1, location=f"l{i}") for i in range(2)]
    levels = [good[0], *(bad for bad, _ in HOSTILE), good[1]]
    response = await client.post(  # ASCII JSON: a lone surrogate travels as its escape
        "/v1/restocks/batch",
        content=json.dumps({"levels": levels}),
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert CONTACT_LIKE not in response.text and "\\u0000" not in response.text
    assert "X-Injected" not in response.text
    body = response.json()
    assert (body["recorded"], body["refused"]) == (2, len(HOSTILE))
    results = body["results"]
    assert results[0]["status"] == results[-1]["status"] == 202
    for i, (_, field) in enumerate(HOSTILE, start=1):
        refused = results[i]
        assert refused["status"] == 422 and refused["result"] is None, refused
        assert refused["error"]["code"] == "invalid_field"
        fields = [d["field"] for d in refused["error"]["details"]]
        assert field.format(i=i) in fields, (field, fields)
    async with runtime.sessions() as session:
        kept = await session.scalar(select(func.count()).select_from(RestockEvent))
    assert kept == 2, "nothing of a refused event is recorded"
    assert (await client.get("/v1/stock/G", headers=bearer(key))).json()["level"] == 2


async def test_a_sku_whose_level_would_pass_the_maximum_keeps_nothing_of_its_events(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["inventory"]
    half = MAX_LEVEL // 2 + 1
    big = [level("A", half, location="east"), level("A", half, location="west")]
    body = await post_batch(client, key, [*big, level("B", 1)])
    assert [r["status"] for r in body["results"]] == [422, 422, 202]
    assert body["results"][0]["error"]["details"][0]["field"] == "levels.0.available"
    assert (await client.get("/v1/stock/A", headers=bearer(key))).json()["level"] == 0
    alone = await client.post("/v1/restocks", json=big[0], headers=bearer(key))
    assert alone.status_code == 202, "not a replay: the refused event was not kept"


@pytest.mark.parametrize("count", [0, MAX_BATCH_LEVELS + 1])
async def test_an_empty_or_oversized_request_is_refused_whole(
    client: httpx.AsyncClient, api_keys: dict[str, str], count: int
) -> None:
    levels = [level("A", 1, location=f"l{i}") for i in range(count)]
    response = await client.post(
        "/v1/restocks/batch", json={"levels": levels}, headers=bearer(api_keys["inventory"])
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "levels"


async def test_a_sync_needs_the_inventory_scope_and_strict_json(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = {"levels": [level("A", 1)]}
    refused = await client.post("/v1/restocks/batch", json=body, headers=bearer(api_keys["stats"]))
    assert refused.status_code == 403
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    malformed = await client.post(
        "/v1/restocks/batch",
        content=json.dumps({"levels": [deep]}),
        headers={**bearer(api_keys["inventory"]), "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "malformed_json"


async def test_a_thousand_levels_across_skus_in_one_request(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
) -> None:
    levels = [level(f"S{i % 250:03d}", 1 + i % 3, location=f"l{i // 250}") for i in range(1000)]
    body = await post_batch(client, api_keys["inventory"], levels)
    assert body["recorded"] == MAX_BATCH_LEVELS
    stock = await client.get("/v1/stock/S007", headers=bearer(api_keys["inventory"]))
    assert stock.json()["level"] == sum(1 + i % 3 for i in range(1000) if i % 250 == 7)
    assert len(await open_waves(runtime)) == 250, "each SKU back from nothing, as alone"


async def test_a_sync_answers_what_the_same_events_one_by_one_would(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    """Two copies of one catalogue, one fed event by event, one by a sync: the same levels,
    queues and step sizes (the SKU's own multiplier, a wave that is open and rises, one
    that opens, a SKU nobody waits for, one that sells out)."""
    key, admin = api_keys["inventory"], api_keys["all"]

    def events(copy: str) -> list[dict[str, Any]]:
        return [
            level(f"{copy}-own", 3, occurred=10),  # multiplier 2: 6 of 8 told
            level(f"{copy}-open", 2, occurred=10, location="east"),  # rises 1 → 3, no step run yet
            level(f"{copy}-new", 4, occurred=10),
            level(f"{copy}-nobody", 5, occurred=10),
            level(f"{copy}-gone", 0, occurred=10),
        ]

    for copy in ("one", "sync"):
        await subscribe_many(client, admin, 8, sku=f"{copy}-own", start=0)
        await subscribe_many(client, admin, 5, sku=f"{copy}-open", start=100)
        await subscribe_many(client, admin, 2, sku=f"{copy}-new", start=200)
        await subscribe_many(client, admin, 3, sku=f"{copy}-gone", start=300)
        put = await put_policy(client, admin, {"batch_multiplier": 2.0}, sku=f"{copy}-own")
        assert put.status_code == 200, put.text
        for sku, available in ((f"{copy}-open", 1), (f"{copy}-gone", 2)):
            assert (
                await post_level(client, key, available, sku=sku, occurred=1)
            ).status_code == 202

    one_by_one = []
    for body in events("one"):
        response = await client.post("/v1/restocks", json=body, headers=bearer(key))
        assert response.status_code == 202, response.text
        one_by_one.append(response.json())
    synced = [r["result"] for r in (await post_batch(client, key, events("sync")))["results"]]

    def comparable(answer: dict[str, Any]) -> tuple[Any, ...]:
        return (answer["available"], answer["waiting"], answer["first_wave"], answer["applied"])

    assert [comparable(a) for a in synced] == [comparable(a) for a in one_by_one]
    assert [a["first_wave"] for a in synced] == [6, 3, 2, 0, 0]
    waves = await open_waves(runtime)
    assert {sku.removeprefix("sync-"): n for sku, n in waves.items() if sku.startswith("sync")} == {
        sku.removeprefix("one-"): n for sku, n in waves.items() if sku.startswith("one")
    }


async def test_the_products_a_sync_carries_end_as_the_same_events_sent_one_by_one_would(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    """Every location of a sync repeats its SKU's product; each field ends with the value of
    the last event that gives it, whichever events repeat which product."""
    old = {"name": "Old name", "url": "https://shop.example/old"}
    new = {"name": "New name", "image_url": "https://shop.example/new.png"}
    levels = [
        level("A", 1, location=f"store-{i}", occurred=i, product=product)
        for i, product in enumerate([old, new, old, new, old])
    ]
    await post_batch(client, api_keys["inventory"], levels)
    async with runtime.sessions() as session:
        row = (
            await session.execute(
                select(Product.name, Product.url, Product.image_url).where(Product.sku == "A")
            )
        ).one()
    assert tuple(row) == ("Old name", "https://shop.example/old", "https://shop.example/new.png")
