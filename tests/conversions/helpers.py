from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import func, select

from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from backinstock.senders.outbox import open_content
from tests.helpers import bearer, subscription_body

SKU = "SKU-1"
PRODUCT_URL = "https://shop.example/p/1?color=red"


def email(i: int) -> str:
    return f"shopper{i}@example.com"


async def subscribe_by_email(
    client: httpx.AsyncClient, key: str, n: int, *, sku: str = SKU, **overrides: Any
) -> list[str]:
    ids = []
    for i in range(n):
        body = subscription_body(
            sku=sku,
            channel="email",
            contact=email(i),
            customer_id=f"c-{i}",
            product={"name": "Red T-shirt", "url": PRODUCT_URL},
            **overrides,
        )
        response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def order_body(
    order_id: str, *, sku: str = SKU, price: str = "99.00", **extra: Any
) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "items": [{"sku": sku, "quantity": 1, "unit_price": price}],
        "currency": "CNY",
        **extra,
    }


async def post_order(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/orders", json=body, headers=bearer(key))


async def outbox_by_subscription(runtime: Runtime, kind: str = "restock") -> dict[str, str]:
    """Subscription id → the text of its dev-outbox message of that kind (opened)."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.subscription_id, DevOutboxMessage)
            .join(DevOutboxMessage, DevOutboxMessage.notification_id == Notification.id)
            .where(Notification.kind == kind)
        )
        return {
            str(sub_id): open_content(runtime.keys.cipher, message).body for sub_id, message in rows
        }


async def sent_count(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        return int(
            await session.scalar(select(func.count()).where(Notification.status == "sent")) or 0
        )


def tracked_token(body: str) -> str:
    match = re.search(r"/r/([A-Za-z0-9_-]{44})", body)
    assert match, "the message carries a tracked link"
    return match.group(1)


def total(revenues: list[str]) -> Decimal:
    return sum((Decimal(r) for r in revenues), Decimal(0))
