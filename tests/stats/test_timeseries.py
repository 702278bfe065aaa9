from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import httpx
import pytest

from backinstock.runtime import Runtime
from backinstock.stats.schemas import Metric
from tests.helpers import bearer
from tests.stats.seed import at, funnel_scenario, seeding

WEEK = {"since": "2026-09-01T00:00:00Z", "until": "2026-09-08T00:00:00Z"}


async def series(client: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/stats/timeseries", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def values(body: dict[str, Any]) -> list[Any]:
    return [point["value"] for point in body["points"]]


async def test_daily_buckets_are_zero_filled_and_ordered(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with seeding(runtime) as s:
        await s.message(created_at=at(1), sent_at=at(1))
        await s.message(created_at=at(23), sent_at=at(23.99))
        await s.message(created_at=at(days=2), sent_at=at(days=2, hours=5))
    body = await series(
        client,
        api_keys["stats"],
        metric="notified",
        since=WEEK["since"],
        until=at(days=4).isoformat(),
    )
    assert body == {
        "metric": "notified",
        "interval": "day",
        "since": "2026-09-01T00:00:00Z",
        "until": "2026-09-05T00:00:00Z",
        "points": [
            {"t": "2026-09-01T00:00:00Z", "value": 2},
            {"t": "2026-09-02T00:00:00Z", "value": 0},
            {"t": "2026-09-03T00:00:00Z", "value": 1},
            {"t": "2026-09-04T00:00:00Z", "value": 0},
        ],
    }


async def test_hourly_buckets_with_partial_ends(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with seeding(runtime) as s:
        await s.subscription(created_at=at(1.2))  # before since: not counted
        await s.subscription(created_at=at(1.7))
        await s.subscription(created_at=at(3.1))
        await s.subscription(created_at=at(3.6))  # at or after until: not counted
    body = await series(
        client,
        api_keys["stats"],
        metric="subscribed",
        interval="hour",
        since="2026-09-01T01:30:00Z",
        until="2026-09-01T03:30:00Z",
    )
    assert [p["t"] for p in body["points"]] == [
        "2026-09-01T01:00:00Z",
        "2026-09-01T02:00:00Z",
        "2026-09-01T03:00:00Z",
    ]
    assert values(body) == [1, 0, 1]


async def test_failures_count_when_created_or_when_sent(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with seeding(runtime) as s:
        await s.message(created_at=at(days=1), status="failed")
        await s.message(created_at=at(days=1), sent_at=at(days=2), delivery_status="failed")
        await s.message(created_at=at(days=2), sent_at=at(days=2))  # delivered
    body = await series(client, api_keys["stats"], metric="failed", **WEEK)
    assert values(body) == [0, 1, 1, 0, 0, 0, 0]
    delivered = await series(client, api_keys["stats"], metric="delivered", **WEEK)
    assert values(delivered) == [0, 0, 1, 0, 0, 0, 0]


async def test_revenue_is_decimal_strings_in_one_currency(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    body = await series(client, api_keys["stats"], metric="revenue", **WEEK)
    assert body["currency"] == "CNY"
    assert values(body) == ["198.50", *["0.00"] * 6]
    usd = await series(client, api_keys["stats"], metric="revenue", currency="USD", **WEEK)
    assert usd["currency"] == "USD" and values(usd)[0] == "50.00"
    count = await series(client, api_keys["stats"], metric="converted", **WEEK)
    assert "currency" not in count


async def test_points_add_up_to_the_funnel(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    key = api_keys["stats"]
    for params in ({}, {"sku": "SKU-1"}, {"channel": "email"}):
        funnel = (
            await client.get("/v1/stats/funnel", params=WEEK | params, headers=bearer(key))
        ).json()
        for metric in Metric:
            for interval in ("day", "hour"):
                body = await series(
                    client, key, metric=metric.value, interval=interval, **WEEK, **params
                )
                if metric is Metric.REVENUE:
                    total = sum((Decimal(v) for v in values(body)), Decimal(0))
                    assert total == Decimal(funnel["revenue"]), (metric, params)
                elif metric is not Metric.CONVERTED:  # distinct shoppers per bucket
                    assert sum(values(body)) == funnel[metric.value], (metric, params)


async def test_default_period_is_30_days_or_48_hours_before_until(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["stats"]
    daily = await series(client, key, metric="clicked", until="2026-09-01T00:00:00Z")
    assert daily["since"] == "2026-08-02T00:00:00Z" and len(daily["points"]) == 30
    hourly = await series(client, key, metric="clicked", interval="hour", until=at(0.5).isoformat())
    assert hourly["since"] == "2026-08-30T00:30:00Z" and len(hourly["points"]) == 49
    now = await series(client, key, metric="coupons_issued")
    assert len(now["points"]) == 31  # until is now, mid-day: both ends partial
    assert all(v == 0 for v in values(now))


async def test_csv_is_t_and_value(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    headers = {**bearer(api_keys["stats"]), "Accept": "text/csv"}
    response = await client.get(
        "/v1/stats/timeseries", params={"metric": "revenue", **WEEK}, headers=headers
    )
    assert response.status_code == 200
    assert 'filename="timeseries-revenue.csv"' in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["t", "value"]
    assert rows[1] == ["2026-09-01T00:00:00Z", "198.50"]
    assert len(rows) == 1 + 7


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"metric": "revenue_per_visit"}, "metric"),
        ({}, "metric"),
        ({"metric": "notified", "interval": "week"}, "interval"),
        ({"metric": "notified", "interval": "hour", "since": "2026-01-01T00:00:00Z",
          "until": "2026-09-01T00:00:00Z"}, "since"),
        ({"metric": "notified", "since": "2020-01-01T00:00:00Z",
          "until": "2026-09-01T00:00:00Z"}, "since"),
        ({"metric": "notified", "until": "2026-09-01"}, "until"),
        ({"metric": "failed", "interval": "hour", "until": "0001-01-01T00:01:01Z"}, "until"),
    ],
)  # fmt: skip
async def test_invalid_parameters_get_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await client.get(
        "/v1/stats/timeseries", params=params, headers=bearer(api_keys["stats"])
    )
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]]


async def test_two_thousand_buckets_are_allowed(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = await series(
        client,
        api_keys["stats"],
        metric="notified",
        interval="hour",
        since="2026-06-09T16:00:00Z",
        until="2026-09-01T00:00:00Z",
    )
    assert len(body["points"]) == 2000
