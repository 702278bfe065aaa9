from __future__ import annotations

import httpx
import pytest

from tests.helpers import bearer
from tests.restocks.helpers import at, post_level, subscribe_many


async def test_level_is_the_sum_over_locations_of_each_latest_event(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["inventory"]
    assert (await post_level(client, key, 3, location="a", occurred=0)).json()["available"] == 3
    assert (await post_level(client, key, 4, location="b", occurred=1)).json()["available"] == 7
    assert (await post_level(client, key, 1, location="a", occurred=2)).json()["available"] == 5
    late = await post_level(client, key, 90, location="a", occurred=1)
    assert late.json()["applied"] is False and late.json()["available"] == 5


async def test_replay_returns_200_with_the_same_restock_id(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await subscribe_many(client, api_keys["all"], 3)
    key = api_keys["inventory"]
    first = await post_level(client, key, 2, event_id="erp-778812")
    again = await post_level(client, key, 2, event_id="erp-778812")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["waiting"] == 3 and first.json()["first_wave"] == 2
    other_location = await post_level(client, key, 2, event_id="erp-778812", location="tmall")
    assert other_location.status_code == 202
    assert other_location.json()["restock_id"] != first.json()["restock_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"available": -1}, "available"),
        ({"available": "lots"}, "available"),
        ({"event_id": ""}, "event_id"),
        ({"sku": "bad sku"}, "sku"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"occurred_at": "2026-11-21T10:00:00"}, "occurred_at"),
        ({"product": {"url": "https://elsewhere.example.org/x"}}, "product.url"),
    ],
)
async def test_invalid_events_get_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], body: dict[str, object], field: str
) -> None:
    payload = {"event_id": "e1", "sku": "S", "available": 1, "occurred_at": at(0), **body}
    response = await client.post(
        "/v1/restocks", json=payload, headers=bearer(api_keys["inventory"])
    )
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]]


async def test_restocks_need_the_inventory_scope(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    payload = {"event_id": "e1", "sku": "S", "available": 1}
    assert (await client.post("/v1/restocks", json=payload)).status_code == 401
    wrong = await client.post("/v1/restocks", json=payload, headers=bearer(api_keys["subscribe"]))
    assert wrong.status_code == 403


async def test_dev_outbox_needs_admin_and_rejects_bad_cursors(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    denied = await client.get("/v1/dev/outbox", headers=bearer(api_keys["stats"]))
    assert denied.status_code == 403
    bad = await client.get("/v1/dev/outbox?cursor=***", headers=bearer(api_keys["admin"]))
    assert bad.status_code == 422
    empty = await client.get("/v1/dev/outbox", headers=bearer(api_keys["admin"]))
    assert empty.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("field", ["event_id", "location"])
async def test_nul_characters_get_422_not_a_database_error(
    client: httpx.AsyncClient, api_keys: dict[str, str], field: str
) -> None:
    payload = {"event_id": "e1", "sku": "S", "available": 1, field: "a\u0000b"}
    response = await client.post(
        "/v1/restocks", json=payload, headers=bearer(api_keys["inventory"])
    )
    assert response.status_code == 422
    assert field in [d["field"] for d in response.json()["error"]["details"]]
