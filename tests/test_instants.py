"""Client instants: RFC 3339 strings with an offset, from 1970 to before 3000, and for events
(a restock's or an order's occurred_at) no more than MAX_CLOCK_SKEW_SECONDS in the future.
No date, however odd, answers 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.boundary import order_body, post_json, restock_body, unlimited_client
from tests.conftest import ClientFactory
from tests.helpers import bearer

# (value, accepted by an event's occurred_at, accepted by the figures' since/until)
INSTANTS: list[tuple[Any, bool, bool]] = [
    ("2026-11-21T10:00:00Z", True, True),
    ("2026-11-21t10:00:00.123456789z", True, True),
    ("2026-11-21T10:00:00+14:00", True, True),
    ("2026-11-21T10:00:00-12:00", True, True),
    ("2016-12-31T23:59:60Z", True, True),  # a leap second
    ("1970-01-01T00:00:00Z", True, True),
    ("2999-12-31T23:59:59Z", False, True),  # the future: fine as a period's end
    ("9999-12-31T23:59:59Z", False, False),
    ("9999-12-31T23:59:59-01:00", False, False),  # year 10000 in UTC
    ("3000-01-01T00:00:00Z", False, False),
    ("1969-12-31T23:59:59Z", False, False),
    ("1970-01-01T00:00:00+14:00", False, False),  # 1969 in UTC
    ("0001-01-01T00:00:00Z", False, False),
    ("0001-01-01T00:00:00+01:00", False, False),  # year 0 in UTC
    ("0000-01-01T00:00:00Z", False, False),
    ("2026-11-21T10:00:00", False, False),  # no offset
    ("2026-11-21", False, False),
    ("2026-02-30T10:00:00Z", False, False),
    ("2026-11-21T24:00:00Z", False, False),
    ("2026-11-21T10:00:61Z", False, False),
    ("2026-11-21T10:00:00+24:00", False, False),
    ("yesterday", False, False),
    ("", False, False),
    (0, False, False),
    (1764000000, False, False),
    (0.5, False, False),
    (True, False, False),
    (None, True, True),  # absent: the time received, or the default period
]


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with unlimited_client(runtime) as c:
        yield c


def _ids(value: Any) -> str:
    return repr(value)


@pytest.mark.parametrize(("value", "accepted", "_"), INSTANTS, ids=[_ids(v[0]) for v in INSTANTS])
async def test_occurred_at_of_a_restock_and_an_order(
    client: httpx.AsyncClient, api_keys: dict[str, str], value: Any, accepted: bool, _: bool
) -> None:
    key = api_keys["all"]
    for endpoint, body, ok in [
        ("/v1/restocks", restock_body(occurred_at=value), 202),
        ("/v1/orders", order_body(occurred_at=value), 201),
    ]:
        response = await post_json(client, key, endpoint, body)
        assert response.status_code == (ok if accepted else 422), (endpoint, response.text)
        if not accepted:
            error = response.json()["error"]
            assert [d["field"] for d in error["details"]] == ["occurred_at"]
            assert error["code"] == "invalid_field"


@pytest.mark.parametrize(("value", "_", "accepted"), INSTANTS, ids=[_ids(v[0]) for v in INSTANTS])
async def test_since_and_until_of_the_figures(
    client: httpx.AsyncClient, api_keys: dict[str, str], value: Any, _: bool, accepted: bool
) -> None:
    if value is None:
        return
    text = quote(str(value).lower() if isinstance(value, bool) else str(value), safe="")
    for path in ("/v1/stats/funnel", "/v1/stats/timeseries?metric=notified&"):
        for name in ("since", "until"):
            query = f"{path}{'&' if '?' in path else '?'}{name}={text}"
            if name == "since" and accepted and value.startswith("2999"):
                query += "&until=2999-12-31T23:59:59.5Z"
            response = await client.get(query, headers=bearer(key := api_keys["stats"]))
            assert response.status_code < 500, (query, response.text)
            if accepted and "timeseries" not in path:
                assert response.status_code == 200, (query, response.text)
            if not accepted:
                assert response.status_code == 422, (query, response.text)
                assert name in [d["field"] for d in response.json()["error"]["details"]]
    assert key


async def test_a_restock_from_the_far_future_does_not_pin_the_level(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["inventory"]
    far = restock_body(event_id="far", available=7, occurred_at="9999-12-31T23:59:59Z")
    assert (await post_json(client, key, "/v1/restocks", far)).status_code == 422
    now = restock_body(event_id="now", available=3, occurred_at=_in(0))
    response = await post_json(client, key, "/v1/restocks", now)
    assert response.status_code == 202 and response.json()["available"] == 3
    later = restock_body(event_id="later", available=0, occurred_at=_in(1))
    response = await post_json(client, key, "/v1/restocks", later)
    assert response.json()["applied"] is True and response.json()["available"] == 0


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_the_clock_skew_allowed_is_a_setting(
    make_client: ClientFactory, runtime: Any, api_keys: dict[str, str]
) -> None:
    key = api_keys["all"]
    default = make_client()
    assert runtime.settings.core.max_clock_skew_seconds == 300
    for body, endpoint in [(restock_body, "/v1/restocks"), (order_body, "/v1/orders")]:
        soon = await post_json(default, key, endpoint, body(occurred_at=_in(120)))
        assert soon.status_code in (201, 202), soon.text
        late = await post_json(default, key, endpoint, body(occurred_at=_in(400)))
        assert late.status_code == 422 and "300 s in the future" in late.text
    strict = make_client(
        core=runtime.settings.core.model_copy(update={"max_clock_skew_seconds": 0})
    )
    response = await post_json(
        strict, key, "/v1/restocks", restock_body(event_id="e-2", occurred_at=_in(30))
    )
    assert response.status_code == 422


async def test_instants_are_answered_in_utc(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = order_body(occurred_at="2026-11-21T18:00:00+08:00")
    answer = (await post_json(client, api_keys["all"], "/v1/orders", body)).json()
    assert answer["occurred_at"] == "2026-11-21T10:00:00Z"
    leap = order_body(order_id="o-leap", occurred_at="2016-12-31T23:59:60Z")
    answer = (await post_json(client, api_keys["all"], "/v1/orders", leap)).json()
    assert answer["occurred_at"] == "2016-12-31T23:59:59.999999Z"
