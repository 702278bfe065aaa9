"""A subscription's attributes: stored as given, echoed, kept on a repeat, and refused (422
naming the field, never echoing the value) when they break a rule or identify a person."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.helpers import bearer, subscription_body

pytestmark = pytest.mark.asyncio


async def _subscribe(client: httpx.AsyncClient, key: str, attributes: Any) -> httpx.Response:
    body = subscription_body(attributes=attributes)
    return await client.post("/v1/subscriptions", json=body, headers=bearer(key))


async def test_attributes_are_stored_and_echoed_with_their_segment_in_a_column(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    attributes = {"segment": "sensitive-skin", "tier": "gold", "skin_type": "敏感肌"}
    response = await _subscribe(client, api_keys["subscribe"], attributes)
    assert response.status_code == 201, response.text
    assert response.json()["attributes"] == attributes
    fetched = await client.get(
        f"/v1/subscriptions/{response.json()['id']}", headers=bearer(api_keys["subscribe"])
    )
    assert fetched.json()["attributes"] == attributes
    async with runtime.sessions() as session:
        row = (await session.execute(select(Subscription.attributes, Subscription.segment))).one()
    assert row == (attributes, "sensitive-skin")


async def test_no_attributes_store_null_and_echo_an_empty_map(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    response = await client.post(
        "/v1/subscriptions", json=subscription_body(), headers=bearer(api_keys["subscribe"])
    )
    assert response.json()["attributes"] == {}
    async with runtime.sessions() as session:
        row = (await session.execute(select(Subscription.attributes, Subscription.segment))).one()
    assert row == (None, None)


async def test_a_repeat_answers_the_subscription_as_it_is(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["subscribe"]
    first = await _subscribe(client, key, {"segment": "oily", "tier": "gold"})
    again = await _subscribe(client, key, {"segment": "dry"})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["attributes"] == {"segment": "oily", "tier": "gold"}


async def test_values_are_stored_nfc(client: httpx.AsyncClient, api_keys: dict[str, str]) -> None:
    response = await _subscribe(client, api_keys["subscribe"], {"style": "cafe\u0301"})
    assert response.status_code == 201, response.text
    assert response.json()["attributes"] == {"style": "caf\u00e9"}


REFUSED: dict[str, tuple[Any, str]] = {
    "not_an_object": (["segment", "gold"], "attributes"),
    "a_string": ("segment=gold", "attributes"),
    "number_value": ({"tier": 3}, "attributes.tier"),
    "bool_value": ({"vip": True}, "attributes.vip"),
    "null_value": ({"tier": None}, "attributes.tier"),
    "nested_value": ({"tier": {"level": "gold"}}, "attributes.tier"),
    "list_value": ({"tier": ["gold"]}, "attributes.tier"),
    "upper_case_key": ({"Tier": "gold"}, "attributes"),
    "key_with_space": ({"ti er": "gold"}, "attributes"),
    "key_starting_with_digit": ({"1tier": "gold"}, "attributes"),
    "long_key": ({"k" * 33: "gold"}, "attributes"),
    "empty_key": ({"": "gold"}, "attributes"),
    "too_many_keys": ({f"k{i}": "v" for i in range(9)}, "attributes"),
    "empty_value": ({"tier": ""}, "attributes.tier"),
    "blank_value": ({"tier": "   "}, "attributes.tier"),
    "long_value": ({"tier": "g" * 65}, "attributes.tier"),
    "email_value": ({"note": "shopper@mailbox.example"}, "attributes.note"),
    "phone_value": ({"note": "13800138000"}, "attributes.note"),
    "spaced_phone_value": ({"note": "+86 138 0013 8000"}, "attributes.note"),
    "us_phone_value": ({"note": "(415) 555-2671"}, "attributes.note"),
    "segment_with_space": ({"segment": "sensitive skin"}, "attributes"),
    "segment_with_slash": ({"segment": "../../etc"}, "attributes"),
    "segment_in_upper_case": ({"segment": "VIP"}, "attributes"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_refused_attributes_give_422_naming_the_field(
    client: httpx.AsyncClient, api_keys: dict[str, str], case: str
) -> None:
    attributes, field = REFUSED[case]
    response = await _subscribe(client, api_keys["subscribe"], attributes)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert field in [d["field"] for d in error["details"]]


@pytest.mark.parametrize(
    "value", ["2026-01", "gold", "tier-3", "sku-12345678", "敏感肌用户", "a@b", "O'Brien & co"]
)
async def test_ordinary_values_are_taken(
    client: httpx.AsyncClient, api_keys: dict[str, str], value: str
) -> None:
    response = await _subscribe(client, api_keys["subscribe"], {"note": value})
    assert response.status_code == 201, response.text
