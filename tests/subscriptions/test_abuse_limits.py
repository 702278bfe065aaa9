"""Abuse paths of subscribe: every contact a subscription would message counts against the
per-contact limit, fallbacks included (an SMS-pumping guard)."""

from __future__ import annotations

import httpx
import pytest

from backinstock.config import RateLimitSettings
from tests.catalog.helpers import SKU, put_policy
from tests.conftest import ClientFactory
from tests.helpers import bearer, phone, subscription_body

pytestmark = pytest.mark.asyncio

PUMPED = phone(777)


def _with_fallback(i: int, fallback: str = PUMPED, **overrides: object) -> dict[str, object]:
    return subscription_body(
        sku=f"SKU-{i}",
        channel="email",
        contact=f"victim{i}@mailbox.example",
        fallbacks=[{"channel": "sms", "contact": fallback}],
        **overrides,
    )


async def _post(client: httpx.AsyncClient, key: str, body: dict[str, object]) -> httpx.Response:
    return await client.post("/v1/subscriptions", json=body, headers=bearer(key))


async def test_a_fallback_number_counts_against_the_contact_limit(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["subscribe"]
    codes = [(await _post(client, key, _with_fallback(i))).status_code for i in range(15)]
    assert codes == [201] * 10 + [429] * 5, "the default 10/hour holds for a fallback too"
    refused = await _post(client, key, _with_fallback(99))
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    other = await _post(client, key, _with_fallback(100, fallback=phone(778)))
    assert other.status_code == 201


async def test_primary_and_fallback_uses_of_a_number_share_one_limit(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="3/hour"))
    key = api_keys["subscribe"]
    as_primary = subscription_body(sku="P-1", contact=PUMPED)
    assert (await _post(client, key, as_primary)).status_code == 201
    assert (await _post(client, key, _with_fallback(1))).status_code == 201
    assert (await _post(client, key, _with_fallback(2))).status_code == 201
    assert (
        await _post(client, key, subscription_body(sku="P-2", contact=PUMPED))
    ).status_code == 429
    assert (await _post(client, key, _with_fallback(3))).status_code == 429


async def test_a_repeat_with_fallbacks_is_free_for_every_contact(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="2/hour"))
    key = api_keys["subscribe"]
    first = await _post(client, key, _with_fallback(1))
    repeats = [await _post(client, key, _with_fallback(1)) for _ in range(3)]
    assert [r.status_code for r in repeats] == [200, 200, 200]
    assert {r.json()["id"] for r in repeats} == {first.json()["id"]}
    # The fallback number was counted once: one more new subscription may use it.
    assert (await _post(client, key, _with_fallback(2))).status_code == 201
    assert (await _post(client, key, _with_fallback(3))).status_code == 429


async def test_a_channel_the_product_refuses_uses_none_of_the_contacts_limit(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    """The product's channel rule is checked by the subscribe INSERT, after the limits are
    counted: a refusal (422) gives the contact's count back, as a repeat does."""
    client = make_client(rate_limits=RateLimitSettings(rate_limit_per_contact="1/hour"))
    key = api_keys["subscribe"]
    assert (await put_policy(client, api_keys["admin"], {"channels": ["email"]})).status_code == 200
    for _ in range(3):
        refused = await _post(client, key, subscription_body(sku=SKU, contact=PUMPED))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"][0]["field"] == "channel"
    # The number's one subscription an hour is still there to use, on another product.
    assert (
        await _post(client, key, subscription_body(sku="P-9", contact=PUMPED))
    ).status_code == 201
    assert (
        await _post(client, key, subscription_body(sku="P-10", contact=PUMPED))
    ).status_code == 429
