"""Strict types at the boundary: a JSON field takes its own type only (no booleans for
numbers, no numbers for addresses, instants or amounts), query integers are digits, and a
body that is not strict JSON is the documented malformed_json (400), never bad_request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.boundary import (
    Path,
    dotted,
    email_subscription,
    order_body,
    pool_body,
    post_json,
    restock_body,
    with_value,
)
from tests.helpers import bearer

SUB, RESTOCK, ORDER = "/v1/subscriptions", "/v1/restocks", "/v1/orders"
# (endpoint, body, path, values refused, values accepted)
TYPED: list[tuple[str, Any, Path, list[Any], list[Any]]] = [
    (SUB, email_subscription, ("consent", "ip"),
     [False, True, 0, 3232235777, 1.5, [], {}, "999.1.1.1", "203.0.113.9/24", ""],
     ["203.0.113.9", "2001:db8::1"]),
    (SUB, email_subscription, ("consent", "wechat_messages"), [True, "5", 5.0, "5.0"], [5]),
    (SUB, email_subscription, ("attributes", "tier"), [True, 5, 5.0, None, [], {}], ["5"]),
    (RESTOCK, restock_body, ("available",), [True, False, "5", 5.0, " 5", "5e0", None], [5]),
    (RESTOCK, restock_body, ("occurred_at",), [0, 1764000000, 0.5, True], ["2026-11-21T10:00:00Z"]),
    (ORDER, order_body, ("items", 0, "quantity"), [True, "1", 1.0], [1]),
    (ORDER, order_body, ("items", 0, "unit_price"),
     [99, 99.0, True, "1e5", " 99.00", "99.", ".5", "-1", "99,00", "NaN", "Infinity"],
     ["99.00", "99", "0.0001"]),
    (ORDER, order_body, ("occurred_at",), [0, 0.5, False], ["2026-11-21T10:00:00+08:00"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("endpoint", "base", "path", "refused", "accepted"),
    TYPED,
    ids=[f"{t[0]}:{dotted(t[2])}" for t in TYPED],
)
async def test_json_fields_take_their_own_type_only(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    endpoint: str,
    base: Any,
    path: Path,
    refused: list[Any],
    accepted: list[Any],
) -> None:
    key = api_keys["all"]
    for value in refused:
        response = await post_json(client, key, endpoint, with_value(base(), path, value))
        assert response.status_code == 422, (value, response.text)
        assert dotted(path) in [d["field"] for d in response.json()["error"]["details"]], value
    for i, value in enumerate(accepted):
        body = with_value(base(), path, value)
        if endpoint == ORDER:
            body["order_id"] = f"o-{i}"
        if endpoint == RESTOCK:
            body["event_id"] = f"e-{i}"
        response = await post_json(client, key, endpoint, body)
        assert response.status_code in (200, 201, 202), (value, response.text)


@pytest.mark.parametrize(
    "query",
    [
        "/v1/stats/funnel?until=0.5",
        "/v1/stats/funnel?since=0",
        "/v1/stats/demand?limit=1.0",
        "/v1/stats/demand?limit=%205",
        "/v1/stats/demand?limit=5e0",
        "/v1/stats/demand?limit=true",
        "/v1/stats/demand?limit=-1",
        "/v1/stats/demand?limit=99999999999",
        "/v1/stats/segments?limit=1.0",
        "/r/token?redirect=0.0",
        "/r/token?redirect=false",
    ],
)
async def test_query_numbers_and_instants_are_strict(
    client: httpx.AsyncClient, api_keys: dict[str, str], query: str
) -> None:
    response = await client.get(query, headers=bearer(api_keys["stats"]))
    assert response.status_code == 422, response.text
    name = query.split("?")[1].split("=")[0]
    assert name in [d["field"] for d in response.json()["error"]["details"]]
    assert (
        await client.get("/v1/stats/demand?limit=5", headers=bearer(api_keys["stats"]))
    ).is_success


MALFORMED: dict[str, bytes] = {
    "syntax": b'{"sku": "A", ',
    "deep_arrays": b"[" * 10_000 + b"]" * 10_000,
    "deep_objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "nested_33": b'{"product": ' + b"[" * 32 + b"]" * 32 + b"}",
    "integer_100k_digits": b'{"available": ' + b"9" * 100_000 + b"}",
    "integer_21_digits": b'{"available": 123456789012345678901}',
    "float_overflow": b'{"available": 1e400}',
    "nan": b'{"available": NaN}',
    "infinity": b'{"available": Infinity}',
    "minus_infinity": b'{"available": -Infinity}',
    "not_utf8": b'{"sku": "\xff\xfe"}',
    "utf16": '{"sku": "A"}'.encode("utf-16"),
    "bom": b'\xef\xbb\xbf{"sku": "A"}',
    "trailing_data": b'{"sku": "A"} {"sku": "B"}',
    "lone_surrogate_bytes": b'{"sku": "\xed\xa0\x80"}',
}
BODY_ENDPOINTS = [SUB, RESTOCK, ORDER, "/v1/coupons/pools", "/v1/privacy/erase"]


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_bodies_outside_strict_json_are_malformed_json(
    client: httpx.AsyncClient, api_keys: dict[str, str], case: str
) -> None:
    headers = {**bearer(api_keys["all"]), "content-type": "application/json"}
    for endpoint in BODY_ENDPOINTS:
        response = await client.post(endpoint, content=MALFORMED[case], headers=headers)
        assert response.status_code == 400, (endpoint, response.text)
        error = response.json()["error"]
        assert error["code"] == "malformed_json", (endpoint, error)
        assert "9999" not in response.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"sku": "A", "available": 12345678901234567890, "event_id": "e"}',  # 20 digits: 422
        b'{"sku": "A", "available": 1e308, "event_id": "e"}',
        b'{"product": ' + b"[" * 31 + b"]" * 31 + b', "sku": "A", "available": 1, "event_id": "e"}',
    ],
)
async def test_strict_json_with_wrong_values_is_a_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], body: bytes
) -> None:
    headers = {**bearer(api_keys["all"]), "content-type": "application/json"}
    response = await client.post(RESTOCK, content=body, headers=headers)
    assert response.status_code == 422, response.text


async def test_lone_surrogate_escapes_are_json_and_refused_by_the_field(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await post_json(
        client, api_keys["all"], "/v1/coupons/pools", pool_body(name="a\ud800")
    )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["name"]
