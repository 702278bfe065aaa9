from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backinstock import db
from backinstock.auth.models import ApiKey
from backinstock.auth.service import Principal
from backinstock.dashboard import session as dashboard_session
from backinstock.db import utcnow
from backinstock.runtime import Runtime
from tests.helpers import bearer
from tests.stats.seed import at, funnel_scenario, seeding

WEEK = {"since": "2026-09-01T00:00:00Z", "until": "2026-09-08T00:00:00Z"}
SPEC_KEYS = {
    "subscribed", "waiting", "notified", "delivered", "failed", "clicked", "converted",
    "revenue", "currency", "coupons_issued", "coupons_redeemed", "click_rate",
    "conversion_rate", "median_seconds_restock_to_send", "compensations_sent",
    "holds_placed", "holds_consumed", "holds_expired",
}  # fmt: skip


async def funnel(client: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/stats/funnel", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_every_figure_of_a_week(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    body = await funnel(client, api_keys["stats"], **WEEK)
    assert body.keys() >= SPEC_KEYS
    assert body == {
        "subscribed": 5,
        "waiting": 2,
        "notified": 4,
        "delivered": 3,
        "failed": 2,
        "clicked": 2,
        "converted": 2,
        "revenue": "198.50",
        "currency": "CNY",
        "revenue_by_currency": {"CNY": "198.50", "USD": "50.00"},
        "coupons_issued": 2,
        "coupons_redeemed": 2,
        "compensations_sent": 0,
        "holds_placed": 0,
        "holds_consumed": 0,
        "holds_expired": 0,
        "substitute_messages_sent": 0,
        "substitute_clicks": 0,
        "saved_by_substitute": 0,
        "click_rate": 0.5,
        "conversion_rate": 0.5,
        "median_seconds_restock_to_send": 25.0,
        "since": "2026-09-01T00:00:00Z",
        "until": "2026-09-08T00:00:00Z",
    }


async def test_sku_narrows_every_figure(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    body = await funnel(client, api_keys["stats"], sku="SKU-1", **WEEK)
    figures = {k: body[k] for k in SPEC_KEYS}
    assert figures == {
        "subscribed": 4,
        "waiting": 2,
        "notified": 3,
        "delivered": 2,
        "failed": 2,
        "clicked": 1,
        "converted": 1,
        "revenue": "198.50",
        "currency": "CNY",
        "coupons_issued": 1,
        "coupons_redeemed": 2,
        "compensations_sent": 0,
        "holds_placed": 0,
        "holds_consumed": 0,
        "holds_expired": 0,
        "click_rate": 0.3333,
        "conversion_rate": 0.3333,
        "median_seconds_restock_to_send": 30.0,
    }
    assert body["revenue_by_currency"] == {"CNY": "198.50"}


async def test_channel_narrows_every_figure(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    body = await funnel(client, api_keys["stats"], channel="email", **WEEK)
    figures = {k: body[k] for k in SPEC_KEYS}
    assert figures == {
        "subscribed": 1,
        "waiting": 0,
        "notified": 1,
        "delivered": 1,
        "failed": 0,
        "clicked": 1,
        "converted": 1,
        "revenue": "50.00",
        "currency": "USD",
        "coupons_issued": 1,
        "coupons_redeemed": 0,
        "compensations_sent": 0,
        "holds_placed": 0,
        "holds_consumed": 0,
        "holds_expired": 0,
        "click_rate": 1.0,
        "conversion_rate": 1.0,
        "median_seconds_restock_to_send": 20.0,
    }


async def test_currency_chooses_the_revenue(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    usd = await funnel(client, api_keys["stats"], currency="USD", **WEEK)
    assert (usd["revenue"], usd["currency"]) == ("50.00", "USD")
    eur = await funnel(client, api_keys["stats"], currency="EUR", **WEEK)
    assert (eur["revenue"], eur["currency"]) == ("0.00", "EUR")
    assert eur["revenue_by_currency"] == {"CNY": "198.50", "USD": "50.00"}


async def test_period_bounds_are_inclusive_then_exclusive(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with seeding(runtime) as s:
        await s.message(created_at=at(1), sent_at=at(2))
        await s.message(created_at=at(2), sent_at=at(3))
        await s.coupon(issued_at=at(2), redeemed_at=at(3))
    key = api_keys["stats"]
    at_since = await funnel(client, key, since="2026-09-01T02:00:00Z")
    assert (at_since["notified"], at_since["coupons_issued"]) == (2, 1)
    at_until = await funnel(client, key, until="2026-09-01T03:00:00Z")
    assert (at_until["notified"], at_until["coupons_redeemed"]) == (1, 0)
    assert at_until["since"] is None
    offset = await funnel(client, key, since="2026-09-01T10:30:00+08:00")  # 02:30Z
    assert offset["notified"] == 1 and offset["since"] == "2026-09-01T02:30:00Z"


async def test_all_time_until_now(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await funnel_scenario(runtime)
    now = utcnow()
    async with seeding(runtime) as s:
        await s.message(created_at=now - timedelta(minutes=2), sent_at=now - timedelta(minutes=1))
        await s.message(created_at=now, sent_at=now + timedelta(hours=1))  # not yet
    body = await funnel(client, api_keys["stats"])
    assert body["since"] is None
    assert body["notified"] == 4 + 1 + 1 + 1  # the week, the one before, the one at its end, now
    assert body["subscribed"] == 7 + 10 + 2  # the scenario's own, those behind messages
    assert body["converted"] == 2 and body["revenue"] == "297.50"


async def test_nothing_gives_zeros_and_nulls(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = await funnel(client, api_keys["stats"])
    assert {k: body[k] for k in SPEC_KEYS} == {
        **dict.fromkeys(SPEC_KEYS, 0),
        "revenue": "0.00",
        "currency": None,
        "click_rate": 0.0,
        "conversion_rate": 0.0,
        "median_seconds_restock_to_send": None,
    }


async def test_median_of_an_odd_count_is_the_middle_one(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with seeding(runtime) as s:
        for seconds in (3, 1, 200, 2, 4):
            await s.message(created_at=at(1), sent_at=at(1) + timedelta(seconds=seconds))
    body = await funnel(client, api_keys["stats"])
    assert body["median_seconds_restock_to_send"] == 3.0


@pytest.mark.parametrize("how", ["accept", "query"])
async def test_csv_is_one_row_of_the_same_figures(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, how: str
) -> None:
    await funnel_scenario(runtime)
    headers = bearer(api_keys["stats"])
    params = dict(WEEK)
    if how == "accept":
        headers["Accept"] = "text/csv"
    else:
        params["format"] = "csv"
    response = await client.get("/v1/stats/funnel", params=params, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="funnel.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row.keys() >= SPEC_KEYS
    assert row["notified"] == "4" and row["revenue"] == "198.50" and row["currency"] == "CNY"
    assert row["click_rate"] == "0.5" and row["median_seconds_restock_to_send"] == "25.0"
    assert row["since"] == "2026-09-01T00:00:00Z"


async def test_format_json_wins_over_accept(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    headers = {**bearer(api_keys["stats"]), "Accept": "text/csv"}
    response = await client.get("/v1/stats/funnel?format=json", headers=headers)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"channel": "fax"}, "channel"),
        ({"currency": "usd"}, "currency"),
        ({"currency": "DOLLARS"}, "currency"),
        ({"since": "2026-09-01T00:00:00"}, "since"),  # no offset
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-09-02T00:00:00Z", "until": "2026-09-01T00:00:00Z"}, "since"),
        ({"until": "0001-01-01T00:17:35+00:05"}, "until"),
        ({"since": "1969-12-31T23:59:59Z"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
        ({"sku": "bad sku"}, "sku"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_invalid_parameters_get_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await client.get(
        "/v1/stats/funnel", params=params, headers=bearer(api_keys["stats"])
    )
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["error"]["details"]]


@pytest.mark.parametrize("path", ["funnel", "demand", "timeseries?metric=notified"])
async def test_figures_need_a_stats_key(
    client: httpx.AsyncClient, api_keys: dict[str, str], path: str
) -> None:
    url = f"/v1/stats/{path}"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=bearer("bis_nope"))).status_code == 401
    for scope in ("subscribe", "inventory", "admin"):
        response = await client.get(url, headers=bearer(api_keys[scope]))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    assert (await client.get(url, headers=bearer(api_keys["all"]))).status_code == 200
    assert (await client.get(url, headers=bearer(api_keys["stats"]))).status_code == 200


async def test_the_dashboard_session_cookie_reads_the_figures(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as s:
        key = await s.scalar(select(ApiKey).where(ApiKey.name == "k-stats"))
        assert key is not None
        principal = Principal(key.id, key.name, frozenset(key.scopes.split()))
        cookie = await dashboard_session.issue(s, runtime.keys.timed, principal, 3600)
    for path in ("funnel", "demand", "timeseries?metric=clicked"):
        client.cookies.set(dashboard_session.COOKIE_NAME, cookie)
        assert (await client.get(f"/v1/stats/{path}")).status_code == 200
        client.cookies.set(dashboard_session.COOKIE_NAME, cookie[:-2] + "xx")
        assert (await client.get(f"/v1/stats/{path}")).status_code == 401
    client.cookies.clear()
