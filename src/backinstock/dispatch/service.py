"""Sending notifications: claim under a lease, render, hand to the channel's sender, record.

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has one writer), so any number
of workers on any number of hosts take disjoint batches. A claim expires after
``CLAIM_LEASE_SECONDS``;
the sweeper then returns the work to the queue when the sender is idempotent, and marks it
failed (``in_doubt``) when a retry could send a second message.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import contacts, db
from backinstock.catalog.models import Product
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys, Sealed
from backinstock.db import utcnow
from backinstock.dispatch.models import Notification
from backinstock.dispatch.render import MessageContext, render
from backinstock.senders.base import Outcome, OutgoingMessage, Sender, SendResult
from backinstock.subscriptions.models import IN_QUEUE, Subscription
from backinstock.subscriptions.service import UNSUBSCRIBE_TOKEN, contact_aad, profile_aad

BATCH = 200
MAX_ATTEMPTS = 6
CLICK_TOKEN = "click"  # noqa: S105 - a token purpose, not a secret


async def claim(
    session: AsyncSession, ids: list[uuid.UUID] | None, lease: timedelta, limit: int = BATCH
) -> list[uuid.UUID]:
    """Take up to ``limit`` due pending notifications (among ``ids`` when given)."""
    now = utcnow()
    due = (
        select(Notification.id)
        .where(Notification.status == "pending", Notification.next_attempt_at <= now)
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if ids is not None:
        due = due.where(Notification.id.in_(ids))
    stmt = (
        update(Notification)
        .where(Notification.id.in_(due.scalar_subquery()))
        .values(status="sending", lease_until=now + lease, attempts=Notification.attempts + 1)
        .returning(Notification.id)
    )
    return list(await session.scalars(stmt))


@dataclass(frozen=True)
class Delivery:
    """What one claimed notification needs to become a message."""

    notification_id: uuid.UUID
    attempts: int
    message: OutgoingMessage | None  # None: nobody to send to any more (unsubscribed, erased)


async def prepare(
    session: AsyncSession, settings: Settings, keys: Keys, ids: list[uuid.UUID]
) -> list[Delivery]:
    rows = await session.execute(
        select(Notification, Subscription, Product.name, Product.url)
        .join(Subscription, Subscription.id == Notification.subscription_id)
        .outerjoin(Product, Product.sku == Notification.sku)
        .where(Notification.id.in_(ids))
    )
    return [
        Delivery(n.id, n.attempts, _message(settings, keys, n, s, name, url))
        for n, s, name, url in rows
    ]


def _message(
    settings: Settings,
    keys: Keys,
    notification: Notification,
    sub: Subscription,
    product_name: str | None,
    product_url: str | None,
) -> OutgoingMessage | None:
    if sub.status not in IN_QUEUE or sub.contact_blob is None or sub.contact_key_id is None:
        return None
    to = keys.cipher.open(Sealed(sub.contact_key_id, sub.contact_blob), contact_aad(sub.id))
    base = settings.core.public_base_url.rstrip("/")
    context = MessageContext(
        name=_name(keys, sub),
        product_name=product_name or sub.sku,
        link=f"{base}/r/{keys.tokens.sign(CLICK_TOKEN, notification.id)}",
        unsubscribe_url=f"{base}/u/{keys.tokens.sign(UNSUBSCRIBE_TOKEN, sub.id)}",
        level=notification.level,
        queue_size=notification.queue_size,
    )
    rendered = render(sub.channel, sub.locale, context)
    return OutgoingMessage(
        notification_id=notification.id,
        channel=sub.channel,
        to=to,
        to_masked=contacts.mask(Channel(sub.channel), to),
        text=rendered.text,
        subject=rendered.subject,
        html=rendered.html,
        link=context.link,
        unsubscribe_url=context.unsubscribe_url,
        data={"product_url": product_url, "locale": sub.locale},
    )


def _name(keys: Keys, sub: Subscription) -> str | None:
    if sub.profile_blob is None or sub.profile_key_id is None:
        return None
    profile: dict[str, Any] = json.loads(
        keys.cipher.open(Sealed(sub.profile_key_id, sub.profile_blob), profile_aad(sub.id))
    )
    name = profile.get("name")
    return str(name) if name else None


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    keys: Keys,
    senders: dict[str, Sender],
    ids: list[uuid.UUID] | None,
) -> int:
    """Claim, send and record one batch; returns how many were claimed."""
    async with db.transaction(sessions) as session:
        lease = timedelta(seconds=settings.waves.claim_lease_seconds)
        claimed = await claim(session, ids, lease)
    if not claimed:
        return 0
    async with sessions() as session:
        deliveries = await prepare(session, settings, keys, claimed)
    results = await _send(senders, [d.message for d in deliveries if d.message is not None])
    attempts = {d.notification_id: d.attempts for d in deliveries}
    skipped = [d.notification_id for d in deliveries if d.message is None]
    async with db.transaction(sessions) as session:
        await record(session, results, attempts, skipped)
    return len(claimed)


async def _send(senders: dict[str, Sender], messages: list[OutgoingMessage]) -> list[SendResult]:
    by_channel: dict[str, list[OutgoingMessage]] = defaultdict(list)
    for message in messages:
        by_channel[message.channel].append(message)
    results: list[SendResult] = []
    for channel, batch in by_channel.items():
        results += await senders[channel].send_batch(batch)
    return results


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: up to 2, 4, 8 … seconds, capped at 5 minutes."""
    ceiling = min(300.0, 2.0**attempts)
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


async def record(
    session: AsyncSession,
    results: list[SendResult],
    attempts: dict[uuid.UUID, int],
    skipped: list[uuid.UUID],
) -> None:
    now = utcnow()
    if skipped:
        await session.execute(
            update(Notification)
            .where(Notification.id.in_(skipped))
            .values(status="cancelled", error="not_waiting", lease_until=None)
        )
    sent = [r for r in results if r.outcome is Outcome.SENT]
    if sent:
        await session.execute(
            update(Notification),
            [
                {
                    "id": r.notification_id,
                    "status": "sent",
                    "sent_at": now,
                    "provider_id": r.provider_id,
                    "lease_until": None,
                }
                for r in sent
            ],
        )
    for result in results:
        if result.outcome is Outcome.SENT:
            continue
        retry = result.outcome is Outcome.TRANSIENT and attempts[result.notification_id] < (
            MAX_ATTEMPTS
        )
        await session.execute(
            update(Notification)
            .where(Notification.id == result.notification_id)
            .values(
                status="pending" if retry else "failed",
                next_attempt_at=now + backoff(attempts[result.notification_id]) if retry else now,
                error=result.error,
                lease_until=None,
            )
        )


async def recover_expired(session: AsyncSession, idempotent_channels: list[str]) -> int:
    """Claims whose worker died: back to pending where a resend is harmless, else failed."""
    now = utcnow()
    expired = (Notification.status == "sending", Notification.lease_until < now)
    back = await session.execute(
        update(Notification)
        .where(*expired, Notification.channel.in_(idempotent_channels))
        .values(status="pending", lease_until=None, next_attempt_at=now)
    )
    await session.execute(
        update(Notification)
        .where(*expired, Notification.channel.not_in(idempotent_channels))
        .values(status="failed", error="in_doubt", lease_until=None)
    )
    return int(back.rowcount or 0)  # type: ignore[attr-defined]


async def stale_pending(session: AsyncSession, older_than: timedelta, cap: int = 100_000) -> int:
    """Due pending work nobody has claimed for a while: a wake-up was lost, or is queued
    behind a long backlog (a drain then helps either way)."""
    cutoff = utcnow() - older_than
    inner = (
        select(Notification.id)
        .where(Notification.status == "pending", Notification.next_attempt_at <= cutoff)
        .limit(cap)
        .subquery()
    )
    return int(await session.scalar(select(func.count()).select_from(inner)) or 0)
