from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.subscriptions.models import Subscription, SubscriptionFallback
from tests.helpers import bearer, phone, subscription_body

pytestmark = pytest.mark.asyncio


async def test_erase_deletes_every_subscription_of_the_contact(
    client: httpx.AsyncClient, api_keys: dict[str, str], session: AsyncSession
) -> None:
    key = api_keys["subscribe"]
    for sku in ("A", "B"):
        await client.post("/v1/subscriptions", json=subscription_body(sku=sku), headers=bearer(key))
    fallback_owner = subscription_body(
        sku="C", contact=phone(7), fallbacks=[{"channel": "sms", "contact": "+8613800138000"}]
    )
    await client.post("/v1/subscriptions", json=fallback_owner, headers=bearer(key))
    await client.post(
        "/v1/subscriptions", json=subscription_body(contact=phone(8)), headers=bearer(key)
    )

    response = await client.post(
        "/v1/privacy/erase",
        json={"contact": "+86 138 0013 8000"},
        headers=bearer(api_keys["admin"]),
    )
    assert response.status_code == 200
    assert response.json() == {"erased": 3}
    remaining = await session.scalar(select(func.count()).select_from(Subscription))
    fallbacks = await session.scalar(select(func.count()).select_from(SubscriptionFallback))
    assert (remaining, fallbacks) == (1, 0)


async def test_erase_needs_admin_and_a_valid_contact(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    denied = await client.post(
        "/v1/privacy/erase", json={"contact": "a@b.cn"}, headers=bearer(api_keys["subscribe"])
    )
    assert denied.status_code == 403
    invalid = await client.post(
        "/v1/privacy/erase", json={"contact": "???"}, headers=bearer(api_keys["admin"])
    )
    assert invalid.status_code == 422
    none = await client.post(
        "/v1/privacy/erase", json={"contact": "a@b.cn"}, headers=bearer(api_keys["admin"])
    )
    assert none.json() == {"erased": 0}
