"""Request bodies refuse what they do not know: a field no schema has ("colour", a typo) is a
422 invalid_field naming it, at the top level and in every nested object, and its value is
never echoed; money is a decimal string, never a JSON number; and a body sent without
`Content-Type: application/json` gets an error that names the header."""

from __future__ import annotations

import json
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

SUB, RESTOCK, ORDER, POOL, ERASE = (
    "/v1/subscriptions",
    "/v1/restocks",
    "/v1/orders",
    "/v1/coupons/pools",
    "/v1/privacy/erase",
)
SECRET = "SECRET-VALUE-4242"


def erase_body() -> dict[str, Any]:
    return {"channel": "email", "contact": "a@mailbox.example"}


# (endpoint, body, the object an unknown field is added to)
PLACES: list[tuple[str, Any, Path]] = [
    (SUB, email_subscription, ()),
    (SUB, email_subscription, ("product",)),
    (SUB, email_subscription, ("consent",)),
    (SUB, email_subscription, ("fallbacks", 0)),
    (RESTOCK, restock_body, ()),
    (RESTOCK, lambda: restock_body(product={"name": "Tee"}), ("product",)),
    (ORDER, order_body, ()),
    (ORDER, order_body, ("items", 0)),
    (ORDER, order_body, ("customer",)),
    (POOL, pool_body, ()),
    (ERASE, erase_body, ()),
]


def _add_unknown(body: dict[str, Any], place: Path) -> dict[str, Any]:
    target: Any = body
    for step in place:
        target = target[step]
    target["colour"] = SECRET
    return body


@pytest.mark.parametrize(
    ("endpoint", "base", "place"),
    PLACES,
    ids=[f"{p[0]}:{dotted(p[2]) or 'body'}" for p in PLACES],
)
async def test_unknown_field_is_refused_and_named(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    endpoint: str,
    base: Any,
    place: Path,
) -> None:
    # the same body without the unknown field is accepted: the field alone is the reason
    accepted = await post_json(client, api_keys["all"], endpoint, base())
    assert accepted.status_code < 300, accepted.text
    response = await post_json(client, api_keys["all"], endpoint, _add_unknown(base(), place))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    field = ".".join([*(str(step) for step in place), "colour"])
    assert [d["field"] for d in error["details"]] == [field]
    assert field in error["message"]
    assert SECRET not in response.text


async def test_several_unknown_fields_are_each_named(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = email_subscription(colour="red", size="M")
    response = await post_json(client, api_keys["subscribe"], SUB, body)
    assert response.status_code == 422
    assert {d["field"] for d in response.json()["error"]["details"]} == {"colour", "size"}


@pytest.mark.parametrize("price", [9.99, 99, 99.0, 1e2])
async def test_money_as_a_json_number_is_refused(
    client: httpx.AsyncClient, api_keys: dict[str, str], price: Any
) -> None:
    body = with_value(order_body(), ("items", 0, "unit_price"), price)
    response = await post_json(client, api_keys["all"], ORDER, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert [d["field"] for d in error["details"]] == ["items.0.unit_price"]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_that_is_not_declared_json_names_the_header(
    client: httpx.AsyncClient, api_keys: dict[str, str], content_type: str | None
) -> None:
    headers = bearer(api_keys["subscribe"])
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.post(SUB, content=json.dumps(email_subscription()), headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type" in error["message"]
    assert "application/json" in error["message"]
    assert [d["field"] for d in error["details"]] == ["Content-Type"]


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_content_types_are_accepted(
    client: httpx.AsyncClient, api_keys: dict[str, str], content_type: str
) -> None:
    headers = {**bearer(api_keys["subscribe"]), "Content-Type": content_type}
    response = await client.post(SUB, content=json.dumps(email_subscription()), headers=headers)
    assert response.status_code == 201, response.text
