"""Exhausted subscriptions expire; stopped ones lose their contacts after RETENTION_DAYS."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from backinstock import db, worker
from backinstock.privacy import retention
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription, SubscriptionFallback
from tests.clock import SteppingClock
from tests.helpers import bearer, phone, subscription_body


async def _subscribe(client: httpx.AsyncClient, key: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        body = subscription_body(
            contact=phone(i), fallbacks=[{"channel": "email", "contact": f"f{i}@example.com"}]
        )
        response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def _set(runtime: Runtime, sub_id: str, **values: object) -> None:
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(Subscription).where(Subscription.id == uuid.UUID(sub_id)).values(**values)
        )


async def _rows(runtime: Runtime) -> dict[str, Subscription]:
    async with runtime.sessions() as session:
        return {str(s.id): s for s in await session.scalars(select(Subscription))}


async def test_exhausted_subscriptions_expire_after_the_attribution_window(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    settings = runtime.settings
    old, recent, budget_left = await _subscribe(client, api_keys["subscribe"], 3)
    now = db.utcnow()
    window = timedelta(seconds=settings.conversion.attribution_window_seconds)
    spent = settings.waves.max_notifications
    await _set(
        runtime,
        old,
        status="notified",
        notification_count=spent,
        last_notified_at=now - window - timedelta(hours=1),
    )
    await _set(
        runtime,
        recent,
        status="notified",
        notification_count=spent,
        last_notified_at=now - window + timedelta(hours=1),
    )
    await _set(
        runtime,
        budget_left,
        status="notified",
        notification_count=spent - 1,
        last_notified_at=now - window - timedelta(hours=1),
    )
    async with db.transaction(runtime.sessions) as session:
        assert await retention.expire_exhausted(session, settings, now) == 1
    rows = await _rows(runtime)
    assert rows[old].status == "expired" and rows[old].stopped_at is not None
    assert rows[recent].status == "notified" and rows[budget_left].status == "notified"


async def test_contacts_are_erased_retention_days_after_the_subscription_stopped(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    settings = runtime.settings
    stale, fresh, waiting = await _subscribe(client, api_keys["subscribe"], 3)
    now = db.utcnow()
    retention_span = timedelta(days=settings.conversion.retention_days)
    await _set(
        runtime,
        stale,
        status="unsubscribed",
        stopped_at=now - retention_span - timedelta(minutes=1),
    )
    await _set(
        runtime, fresh, status="converted", stopped_at=now - retention_span + timedelta(days=1)
    )
    await _set(runtime, waiting, stopped_at=now - retention_span - timedelta(days=1))
    async with db.transaction(runtime.sessions) as session:
        assert await retention.erase_stopped(session, settings, now) == 1
        assert await retention.erase_stopped(session, settings, now) == 0, "done once"
    rows = await _rows(runtime)
    erased = rows[stale]
    assert (erased.contact_blob, erased.contact_index, erased.profile_blob) == (None, None, None)
    assert rows[fresh].contact_blob is not None and rows[waiting].contact_blob is not None
    async with runtime.sessions() as session:
        fallbacks = {
            str(f.subscription_id): f for f in await session.scalars(select(SubscriptionFallback))
        }
    assert fallbacks[stale].contact_blob is None and fallbacks[stale].contact_index is None
    assert fallbacks[fresh].contact_blob is not None
    response = await client.get(f"/v1/subscriptions/{stale}", headers=bearer(api_keys["all"]))
    assert response.status_code == 200, "the row stays for the figures, without its contact"


async def test_the_sweepers_retention_pass_erases_when_the_clock_reaches_retention_days(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
) -> None:
    (stopped,) = await _subscribe(client, api_keys["subscribe"], 1)
    await _set(runtime, stopped, status="unsubscribed", stopped_at=clock.now())
    retention_span = timedelta(days=runtime.settings.conversion.retention_days)

    clock.advance((retention_span - timedelta(minutes=1)).total_seconds())
    await worker.retain_once(runtime)
    assert (await _rows(runtime))[stopped].contact_blob is not None, "kept until the day comes"

    clock.advance(timedelta(minutes=2).total_seconds())
    await worker.retain_once(runtime)
    assert (await _rows(runtime))[stopped].contact_blob is None
