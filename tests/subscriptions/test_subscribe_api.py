from __future__ import annotations

import asyncio

import httpx
import pytest

from backinstock.config import RateLimitSettings
from tests.conftest import ClientFactory
from tests.helpers import bearer, phone, subscription_body

pytestmark = pytest.mark.asyncio


async def subscribe(client: httpx.AsyncClient, key: str, **overrides: object) -> httpx.Response:
    return await client.post(
        "/v1/subscriptions", json=subscription_body(**overrides), headers=bearer(key)
    )


@pytest.mark.parametrize(
    ("channel", "contact", "masked"),
    [
        ("sms", "+8613800138000", "+86 138****8000"),
        ("sms", "+86 138 0013 8000", "+86 138****8000"),
        ("email", "a@b.cn", "a***@b.cn"),
        ("wechat", "oAbC_12345-abcdefghijXYZ", "oAbC****jXYZ"),
    ],
)
async def test_subscribe_each_channel_gives_201_with_masked_contact(
    client: httpx.AsyncClient, api_keys: dict[str, str], channel: str, contact: str, masked: str
) -> None:
    response = await subscribe(client, api_keys["subscribe"], channel=channel, contact=contact)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["contact_masked"] == masked
    assert body["status"] == "waiting"
    assert body["position"] == 1
    assert body["channel"] == channel
    assert contact not in response.text


async def test_duplicate_returns_200_with_same_id_and_position(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["subscribe"]
    first = (await subscribe(client, key)).json()
    await subscribe(client, key, contact=phone(2))
    again = await subscribe(client, key, contact="+86 138-0013-8000")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["position"] == 1


async def test_concurrent_duplicates_make_one_subscription(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    responses = await asyncio.gather(*(subscribe(client, api_keys["subscribe"]) for _ in range(8)))
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.status_code for r in responses).count(201) == 1


async def test_positions_put_vips_first_then_registration_order(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["subscribe"]
    a = (await subscribe(client, key, contact=phone(1))).json()
    b = (await subscribe(client, key, contact=phone(2))).json()
    vip = (await subscribe(client, key, contact=phone(3), priority="vip")).json()
    other_sku = (await subscribe(client, key, contact=phone(4), sku="OTHER")).json()
    assert (a["position"], b["position"], vip["position"]) == (1, 2, 1)
    assert other_sku["position"] == 1
    refreshed = await client.get(f"/v1/subscriptions/{a['id']}", headers=bearer(key))
    assert refreshed.json()["position"] == 2


async def test_fallbacks_are_stored_masked(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await subscribe(
        client,
        api_keys["subscribe"],
        fallbacks=[{"channel": "email", "contact": "Zhang@Example.com"}],
    )
    assert response.status_code == 201
    assert response.json()["fallbacks"] == [
        {"channel": "email", "contact_masked": "Z***@example.com"}
    ]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"contact": "12345"}, "contact"),
        ({"contact": "+86 123"}, "contact"),
        ({"channel": "email", "contact": "not-an-email"}, "contact"),
        ({"channel": "email", "contact": "=?utf-8?q?x=0D=0AX:1?=@example.com"}, "contact"),
        ({"channel": "wechat", "contact": "short"}, "contact"),
        ({"channel": "fax"}, "channel"),
        ({"priority": "gold"}, "priority"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"sku": ""}, "sku"),
        ({"sku": "has space"}, "sku"),
        ({"locale": "not a locale"}, "locale"),
        ({"fallbacks": [{"channel": "email", "contact": "nope"}]}, "fallbacks.0.contact"),
        ({"fallbacks": [{"channel": "sms", "contact": "+8613800138000"}]}, "fallbacks.0.contact"),
        ({"product": {"url": "https://evil.example.org/p"}}, "product.url"),
        ({"product": {"url": "javascript:alert(1)"}}, "product.url"),
        ({"consent": {"text_version": "v1", "ip": "999.1.1.1"}}, "consent.ip"),
        ({"source": "pdp\u0000button"}, "source"),
        ({"product": {"name": "T\u0000shirt"}}, "product.name"),
    ],
)
async def test_invalid_input_gives_422_naming_the_field(
    client: httpx.AsyncClient, api_keys: dict[str, str], overrides: dict[str, object], field: str
) -> None:
    response = await subscribe(client, api_keys["subscribe"], **overrides)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert field in [d["field"] for d in error["details"]]
    assert "12345" not in response.text and "not-an-email" not in response.text


async def test_missing_fields_give_422(client: httpx.AsyncClient, api_keys: dict[str, str]) -> None:
    response = await client.post(
        "/v1/subscriptions", json={}, headers=bearer(api_keys["subscribe"])
    )
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert {"sku", "channel", "contact"} <= fields


async def test_malformed_json_gives_400(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/subscriptions",
        content=b'{"sku": "A", ',
        headers={**bearer(api_keys["subscribe"]), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


async def test_three_megabyte_body_gives_413(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    big = b'{"sku": "' + b"A" * 3_000_000 + b'"}'
    response = await client.post(
        "/v1/subscriptions",
        content=big,
        headers={**bearer(api_keys["subscribe"]), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_chunked_body_over_limit_gives_413(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 100_000

    response = await client.post(
        "/v1/subscriptions", content=chunks(), headers=bearer(api_keys["subscribe"])
    )
    assert response.status_code == 413


async def test_no_key_401_unknown_key_401_wrong_scope_403(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    no_key = await client.post("/v1/subscriptions", json=subscription_body())
    unknown = await subscribe(client, "bis_not-a-real-key")
    wrong_scope = await subscribe(client, api_keys["stats"])
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "unauthorized"
    assert unknown.status_code == 401
    assert wrong_scope.status_code == 403 and wrong_scope.json()["error"]["code"] == "forbidden"


async def test_get_and_delete(client: httpx.AsyncClient, api_keys: dict[str, str]) -> None:
    key = api_keys["subscribe"]
    created = (await subscribe(client, key)).json()
    got = await client.get(f"/v1/subscriptions/{created['id']}", headers=bearer(key))
    assert got.status_code == 200 and got.json()["id"] == created["id"]
    deleted = await client.delete(f"/v1/subscriptions/{created['id']}", headers=bearer(key))
    assert deleted.status_code == 204
    after = (await client.get(f"/v1/subscriptions/{created['id']}", headers=bearer(key))).json()
    assert after["status"] == "unsubscribed" and after["position"] is None
    fresh = await subscribe(client, key)
    assert fresh.status_code == 201 and fresh.json()["id"] != created["id"]


@pytest.mark.parametrize("bad_id", ["nope", "00000000-0000-0000-0000-000000000000"])
async def test_unknown_subscription_is_404(
    client: httpx.AsyncClient, api_keys: dict[str, str], bad_id: str
) -> None:
    key = api_keys["subscribe"]
    assert (await client.get(f"/v1/subscriptions/{bad_id}", headers=bearer(key))).status_code == 404
    response = await client.delete(f"/v1/subscriptions/{bad_id}", headers=bearer(key))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_per_contact_rate_limit_counts_only_new_subscriptions(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="2/hour"))
    key = api_keys["subscribe"]
    assert (await subscribe(client, key, sku="A")).status_code == 201
    assert (await subscribe(client, key, sku="A")).status_code == 200  # a repeat is free
    assert (await subscribe(client, key, sku="B")).status_code == 201
    limited = await subscribe(client, key, sku="C")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limited"
    assert (await subscribe(client, key, sku="C", contact=phone(9))).status_code == 201


async def test_per_ip_rate_limit(make_client: ClientFactory, api_keys: dict[str, str]) -> None:
    client = make_client(
        rate_limits=RateLimitSettings(rate_limit_per_ip="3/minute", rate_limit_per_contact="")
    )
    codes = [
        (await subscribe(client, api_keys["subscribe"], contact=phone(i))).status_code
        for i in range(5)
    ]
    assert codes == [201, 201, 201, 429, 429]


async def test_rate_limited_request_writes_nothing(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="1/hour"))
    key = api_keys["subscribe"]
    await subscribe(client, key, sku="A")
    assert (await subscribe(client, key, sku="B", product={"name": "New"})).status_code == 429
    retry = await subscribe(client, key, sku="B", contact=phone(5))
    assert retry.json()["position"] == 1


async def test_an_over_limit_contact_writes_nothing_when_the_product_is_known(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    """A new subscription with nothing to follow its INSERT commits on its own; a contact
    over its limit keeps the INSERT in the transaction that its 429 rolls back, even when
    nothing else (here the product's details, written a moment ago) would."""
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="1/hour"))
    key = api_keys["subscribe"]
    assert (await subscribe(client, key, sku="B", contact=phone(5))).status_code == 201
    assert (await subscribe(client, key, sku="A")).status_code == 201
    assert (await subscribe(client, key, sku="B")).status_code == 429
    retry = await subscribe(client, key, sku="B", contact=phone(6))
    assert retry.json()["position"] == 2


async def test_repeat_at_the_contact_limit_answers_the_same_subscription(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="1/hour"))
    key = api_keys["subscribe"]
    first = await subscribe(client, key, sku="A")
    repeats = [await subscribe(client, key, sku="A") for _ in range(3)]
    assert [r.status_code for r in repeats] == [200, 200, 200]
    assert {r.json()["id"] for r in repeats} == {first.json()["id"]}
    assert {r.json()["position"] for r in repeats} == {first.json()["position"]}
    assert (await subscribe(client, key, sku="B")).status_code == 429  # repeats took nothing
