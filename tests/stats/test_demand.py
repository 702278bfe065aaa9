from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest

from backinstock.runtime import Runtime
from tests.helpers import bearer
from tests.stats.seed import at, seeding

FORMULA = '=HYPERLINK("http://evil.example","click")'


async def seed_demand(runtime: Runtime) -> None:
    """A and B: 3 in the queue each; C: 1; D: nobody in the queue any more."""
    async with seeding(runtime) as s:
        await s.product("A", FORMULA)
        await s.product("B", "红色T恤 M")
        await s.subscription("A", created_at=at(days=-9), status="converted")  # not queued
        await s.subscription("A", created_at=at(days=-5), status="notified")
        await s.subscription("A", created_at=at(days=-4))
        await s.subscription("A", "email", created_at=at(days=-1))
        for day in (-3, -2, -1):
            await s.subscription("B", "wechat", created_at=at(days=day))
        await s.subscription("C", created_at=at(days=-7))
        await s.subscription("D", created_at=at(days=-8), status="unsubscribed")
        await s.wave("A", opened_at=at(days=-6))
        await s.wave("A", opened_at=at(days=-2))
        await s.wave("D", opened_at=at(days=-1))


async def demand(client: httpx.AsyncClient, key: str, **params: Any) -> httpx.Response:
    response = await client.get("/v1/stats/demand", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response


async def test_skus_ranked_by_waiting_then_sku(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await seed_demand(runtime)
    body = (await demand(client, api_keys["stats"])).json()
    assert body == {
        "items": [
            {
                "sku": "A",
                "product_name": FORMULA,
                "waiting": 3,
                "oldest_waiting_since": "2026-08-27T00:00:00Z",
                "restocks": 2,
                "last_restock_at": "2026-08-30T00:00:00Z",
            },
            {
                "sku": "B",
                "product_name": "红色T恤 M",
                "waiting": 3,
                "oldest_waiting_since": "2026-08-29T00:00:00Z",
                "restocks": 0,
                "last_restock_at": None,
            },
            {
                "sku": "C",
                "product_name": None,
                "waiting": 1,
                "oldest_waiting_since": "2026-08-25T00:00:00Z",
                "restocks": 0,
                "last_restock_at": None,
            },
        ],
        "next_cursor": None,
    }


async def test_cursor_pages_through_every_sku_once(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await seed_demand(runtime)
    async with seeding(runtime) as s:
        for i in range(5):
            await s.subscription(f"E{i}")  # five more SKUs with one shopper each
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = (await demand(client, api_keys["stats"], **params)).json()
        assert len(body["items"]) <= 2
        seen += [item["sku"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["A", "B", "C", "E0", "E1", "E2", "E3", "E4"]


async def test_csv_rows_guard_formulas_and_carry_the_next_cursor(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await seed_demand(runtime)
    response = await demand(client, api_keys["stats"], limit=2, format="csv")
    assert response.headers["content-disposition"] == 'attachment; filename="demand.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["sku"] for row in rows] == ["A", "B"]
    assert rows[0]["product_name"] == "'" + FORMULA
    assert rows[1]["product_name"] == "红色T恤 M"
    assert rows[0]["waiting"] == "3" and rows[0]["restocks"] == "2"
    assert rows[0]["last_restock_at"] == "2026-08-30T00:00:00Z"
    assert rows[1]["last_restock_at"] == ""
    cursor = response.headers["x-next-cursor"]
    assert f"cursor={cursor}" in response.headers["link"]
    assert response.headers["link"].endswith('>; rel="next"')
    last = await demand(client, api_keys["stats"], limit=2, format="csv", cursor=cursor)
    assert [row["sku"] for row in csv.DictReader(io.StringIO(last.text))] == ["C"]
    assert "x-next-cursor" not in last.headers and "link" not in last.headers


async def test_empty_csv_still_has_its_header(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await demand(client, api_keys["stats"], format="csv")
    assert response.text.splitlines() == [
        "sku,product_name,waiting,oldest_waiting_since,restocks,last_restock_at"
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzEsMl0"}, "cursor"),  # [1,2]: well-formed, not ours
        ({"cursor": "WzFlMzAsIkEiXQ"}, "cursor"),  # [1e30,"A"]
        ({"cursor": "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5LCJBIl0"}, "cursor"),  # [99999999999999999999,"A"]
        ({"cursor": "WzEsIlx1MDAwMCJd"}, "cursor"),  # [1,"\u0000"]
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
    ],
)
async def test_bad_paging_gets_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = await client.get(
        "/v1/stats/demand", params=params, headers=bearer(api_keys["stats"])
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field
