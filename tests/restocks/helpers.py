from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from tests.helpers import bearer, phone, subscription_body
from tests.waiting import poll_until

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


async def subscribe_many(
    client: httpx.AsyncClient, key: str, n: int, *, sku: str = "SKU-1", start: int = 0, **kw: Any
) -> list[str]:
    ids = []
    for i in range(start, start + n):
        body = subscription_body(sku=sku, **{"contact": phone(i), **kw})
        response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def post_level(
    client: httpx.AsyncClient,
    key: str,
    available: int,
    *,
    event_id: str | None = None,
    occurred: float = 0.0,
    sku: str = "SKU-1",
    location: str = "main",
) -> httpx.Response:
    body = {
        "event_id": event_id or uuid.uuid4().hex,
        "sku": sku,
        "available": available,
        "location": location,
        "occurred_at": at(occurred),
    }
    return await client.post("/v1/restocks", json=body, headers=bearer(key))


async def outbox_recipients(runtime: Runtime) -> list[str]:
    """Subscription ids that received a dev-outbox message, in the order messages were written."""
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.subscription_id)
            .join(DevOutboxMessage, DevOutboxMessage.notification_id == Notification.id)
            .order_by(DevOutboxMessage.created_at)
        )
        return [str(r[0]) for r in rows]


async def outbox_count(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(DevOutboxMessage)) or 0)


async def wait_for_outbox(runtime: Runtime, expected: int, within: float = 30.0) -> int:
    async def reached() -> bool:
        return await outbox_count(runtime) >= expected

    await poll_until(reached, within)
    return await outbox_count(runtime)
