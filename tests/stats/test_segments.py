"""Figures by segment: `segment=` narrows every figure endpoint, and /v1/stats/segments
puts the funnel of each segment side by side (JSON and CSV, a page at a time)."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx

from backinstock.runtime import Runtime
from tests.helpers import bearer
from tests.stats.seed import at, seeding

WEEK = {"since": "2026-09-01T00:00:00Z", "until": "2026-09-08T00:00:00Z"}
SENSITIVE = {"segment": "sensitive-skin", "tier": "gold"}


async def _scenario(runtime: Runtime) -> None:
    """In the week: sensitive-skin has 2 subscriptions (one converted for CNY 100, one
    waiting with a coupon), 2 messages sent, 1 clicked; oily 1 subscription whose message
    was reported undelivered; no segment 1, sent, clicked and converted for CNY 50; dry 1
    subscription from before the week and nothing else; a pending request is no row."""
    async with seeding(runtime) as s:
        a = await s.subscription(created_at=at(1), status="converted", attributes=SENSITIVE)
        b = await s.subscription(created_at=at(2), attributes={"segment": "sensitive-skin"})
        c = await s.subscription(
            created_at=at(1), status="notified", attributes={"segment": "oily"}
        )
        d = await s.subscription(created_at=at(1), attributes={"tier": "silver"})
        await s.subscription(created_at=at(days=-10), attributes={"segment": "dry"})
        await s.subscription(created_at=at(1), status="pending", attributes={"segment": "new"})
        await s.message(subscription_id=a, created_at=at(1), clicked_at=at(1.5))
        await s.message(subscription_id=b, created_at=at(2))
        await s.message(subscription_id=c, created_at=at(1), delivery_status="undelivered")
        await s.message(subscription_id=d, created_at=at(1), clicked_at=at(1.5))
        await s.conversion(a, revenue="100.00", converted_at=at(3))
        await s.conversion(d, revenue="50.00", converted_at=at(3))
        await s.coupon(subscription_id=b, issued_at=at(2))


async def _get(client: httpx.AsyncClient, key: str, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


async def test_segment_narrows_every_figure_of_the_funnel(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    body = await _get(
        client, api_keys["stats"], "/v1/stats/funnel", segment="sensitive-skin", **WEEK
    )
    figures = {k: body[k] for k in ("subscribed", "waiting", "notified", "delivered")}
    assert figures == {"subscribed": 2, "waiting": 1, "notified": 2, "delivered": 2}
    assert (body["failed"], body["clicked"], body["converted"]) == (0, 1, 1)
    assert (body["revenue"], body["currency"]) == ("100.00", "CNY")
    assert (body["coupons_issued"], body["click_rate"], body["conversion_rate"]) == (1, 0.5, 0.5)
    oily = await _get(client, api_keys["stats"], "/v1/stats/funnel", segment="oily", **WEEK)
    assert (oily["notified"], oily["delivered"], oily["failed"], oily["revenue"]) == (
        1,
        0,
        1,
        "0.00",
    )
    unknown = await _get(client, api_keys["stats"], "/v1/stats/funnel", segment="none-such")
    assert (unknown["subscribed"], unknown["notified"], unknown["converted"]) == (0, 0, 0)


async def test_segment_narrows_the_timeseries_and_the_demand(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    key = api_keys["stats"]
    series = await _get(
        client, key, "/v1/stats/timeseries", metric="notified", segment="sensitive-skin", **WEEK
    )
    assert sum(point["value"] for point in series["points"]) == 2
    revenue = await _get(
        client, key, "/v1/stats/timeseries", metric="revenue", segment="sensitive-skin", **WEEK
    )
    assert [p["value"] for p in revenue["points"] if p["value"] != "0.00"] == ["100.00"]
    everyone = await _get(client, key, "/v1/stats/demand")
    assert [(i["sku"], i["waiting"]) for i in everyone["items"]] == [("SKU-1", 4)]
    segment = await _get(client, key, "/v1/stats/demand", segment="sensitive-skin")
    assert [(i["sku"], i["waiting"]) for i in segment["items"]] == [("SKU-1", 1)]
    assert (await _get(client, key, "/v1/stats/demand", segment="none-such"))["items"] == []


ROWS = [
    {
        "segment": None, "subscribed": 1, "waiting": 1, "notified": 1, "delivered": 1,
        "clicked": 1, "converted": 1, "revenue": "50.00", "currency": "CNY",
        "click_rate": 1.0, "conversion_rate": 1.0,
    },
    {
        "segment": "dry", "subscribed": 0, "waiting": 0, "notified": 0, "delivered": 0,
        "clicked": 0, "converted": 0, "revenue": "0.00", "currency": "CNY",
        "click_rate": 0.0, "conversion_rate": 0.0,
    },
    {
        "segment": "oily", "subscribed": 1, "waiting": 1, "notified": 1, "delivered": 0,
        "clicked": 0, "converted": 0, "revenue": "0.00", "currency": "CNY",
        "click_rate": 0.0, "conversion_rate": 0.0,
    },
    {
        "segment": "sensitive-skin", "subscribed": 2, "waiting": 1, "notified": 2,
        "delivered": 2, "clicked": 1, "converted": 1, "revenue": "100.00", "currency": "CNY",
        "click_rate": 0.5, "conversion_rate": 0.5,
    },
]  # fmt: skip


async def test_the_breakdown_has_a_row_per_segment_the_one_without_first(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    body = await _get(client, api_keys["stats"], "/v1/stats/segments", **WEEK)
    assert body == {"items": ROWS, "next_cursor": None}


async def test_the_breakdown_is_paged_and_narrowed(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    key = api_keys["stats"]
    first = await _get(client, key, "/v1/stats/segments", limit=2, **WEEK)
    assert first["items"] == ROWS[:2] and first["next_cursor"]
    rest = await _get(
        client, key, "/v1/stats/segments", limit=2, cursor=first["next_cursor"], **WEEK
    )
    assert rest == {"items": ROWS[2:], "next_cursor": None}
    email = await _get(client, key, "/v1/stats/segments", channel="email", **WEEK)
    assert email["items"] == []
    one = await _get(client, key, "/v1/stats/segments", segment="oily", **WEEK)
    assert one["items"] == [{**ROWS[2], "currency": None}]  # no revenue in that scope


async def test_the_breakdown_as_csv(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    response = await client.get(
        "/v1/stats/segments",
        params={**WEEK, "limit": 3},
        headers={**bearer(api_keys["stats"]), "accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:3] == ["segment", "subscribed", "waiting"]
    assert rows[1][0] == "" and rows[1][7] == "50.00"
    assert [row[0] for row in rows[1:]] == ["", "dry", "oily"]
    assert response.headers["x-next-cursor"]
    assert 'rel="next"' in response.headers["link"]


async def test_invalid_segment_and_cursor_get_422(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["stats"]
    cases = [
        ("/v1/stats/funnel", {"segment": "Sensitive Skin"}, "segment"),
        ("/v1/stats/timeseries", {"metric": "notified", "segment": "a/b"}, "segment"),
        ("/v1/stats/demand", {"segment": "x" * 65}, "segment"),
        ("/v1/stats/segments", {"segment": ""}, "segment"),
        ("/v1/stats/segments", {"cursor": "bm90LWpzb24"}, "cursor"),
        ("/v1/stats/segments", {"cursor": "WyIuLi8iXQ"}, "cursor"),  # ["../"]
        ("/v1/stats/segments", {"limit": "0"}, "limit"),
        ("/v1/stats/timeseries", {"metric": "notified", "group_by": "channel"}, "group_by"),
        ("/v1/stats/demand", {"group_by": "Segment"}, "group_by"),
        ("/v1/stats/demand", {"cursor": "WzEsIlNLVS0xIiwiLi4vIl0"}, "cursor"),  # [1,"SKU-1","../"]
    ]
    for path, params, field in cases:
        response = await client.get(path, params=params, headers=bearer(key))
        assert response.status_code == 422, (path, params, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]]


async def test_the_timeseries_grouped_by_segment_adds_up_to_its_total(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    key = api_keys["stats"]

    def totals(body: Any) -> dict[str | None, Any]:
        return {
            group["segment"]: [p["value"] for p in group["points"] if p["value"] not in (0, "0.00")]
            for group in body["groups"]
        }

    notified = await _get(
        client, key, "/v1/stats/timeseries", metric="notified", group_by="segment", **WEEK
    )
    assert totals(notified) == {None: [1], "oily": [1], "sensitive-skin": [2]}
    assert sum(p["value"] for p in notified["points"]) == 4, "the total stays beside them"
    assert all(len(g["points"]) == len(notified["points"]) for g in notified["groups"])
    revenue = await _get(
        client, key, "/v1/stats/timeseries", metric="revenue", group_by="segment", **WEEK
    )
    assert totals(revenue) == {None: ["50.00"], "sensitive-skin": ["100.00"]}
    subscribed = await _get(
        client, key, "/v1/stats/timeseries", metric="subscribed", group_by="segment", **WEEK
    )
    assert {g: sum(v) for g, v in totals(subscribed).items()} == {
        None: 1,
        "oily": 1,
        "sensitive-skin": 2,
    }
    plain = await _get(client, key, "/v1/stats/timeseries", metric="notified", **WEEK)
    assert "groups" not in plain

    response = await client.get(
        "/v1/stats/timeseries",
        params={"metric": "notified", "group_by": "segment", "format": "csv", **WEEK},
        headers=bearer(key),
    )
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["t", "segment", "value"]
    assert sum(int(r[2]) for r in rows[1:] if r[1] == "sensitive-skin") == 2
    assert sum(int(r[2]) for r in rows[1:] if r[1] == "") == 1


async def test_the_demand_grouped_by_segment_ranks_each_skus_segments(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _scenario(runtime)
    key = api_keys["stats"]
    grouped = await _get(client, key, "/v1/stats/demand", group_by="segment")
    rows = [(i["sku"], i["segment"], i["waiting"]) for i in grouped["items"]]
    assert rows == [
        ("SKU-1", None, 1),
        ("SKU-1", "dry", 1),
        ("SKU-1", "oily", 1),
        ("SKU-1", "sensitive-skin", 1),
    ]
    assert "segment" not in (await _get(client, key, "/v1/stats/demand"))["items"][0]

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"group_by": "segment", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await _get(client, key, "/v1/stats/demand", **params)
        seen += [i["segment"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [None, "dry", "oily", "sensitive-skin"], "paged without loss or repeat"

    response = await client.get(
        "/v1/stats/demand", params={"group_by": "segment", "format": "csv"}, headers=bearer(key)
    )
    header = next(csv.reader(io.StringIO(response.text)))
    assert header[-1] == "segment"
    plain = await client.get("/v1/stats/demand", params={"format": "csv"}, headers=bearer(key))
    assert "segment" not in next(csv.reader(io.StringIO(plain.text)))
