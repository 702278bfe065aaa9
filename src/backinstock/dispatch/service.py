"""Sending notifications: claim under a lease, render, hand to the channel's sender, record.

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has one writer), so any number
of workers on any number of hosts take disjoint batches. A claim expires after
``CLAIM_LEASE_SECONDS``;
the sweeper then returns the work to the queue when the sender is idempotent, and marks it
failed (``in_doubt``) when a retry could send a second message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import contacts, db
from backinstock.catalog.models import Product
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.coupons.models import Coupon, CouponPool
from backinstock.crypto import Keys, Sealed
from backinstock.db import utcnow
from backinstock.dispatch.models import Kind, Notification
from backinstock.dispatch.quiet import hold_until
from backinstock.dispatch.render import MessageContext, render
from backinstock.dispatch.throttle import Throttle
from backinstock.senders.base import Outcome, OutgoingMessage, Sender, SendResult
from backinstock.subscriptions.models import IN_QUEUE, Subscription, SubscriptionFallback
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
class Contact:
    rank: int  # 0 the primary contact, n the fallback of rank n
    channel: str
    key_id: str
    blob: bytes
    row_id: uuid.UUID  # the row whose id the ciphertext is bound to


@dataclass(frozen=True)
class Delivery:
    """What became of one claimed notification before any provider was called."""

    notification_id: uuid.UUID
    subscription_id: uuid.UUID
    attempts: int
    contact: Contact | None  # None: nobody to send to (unsubscribed, erased, all failed)
    message: OutgoingMessage | None = None
    held_until: datetime | None = None  # quiet hours: send when they end
    skip: str | None = None  # why nothing is sent: "not_waiting" or "no_contact"


def contacts_from(sub: Subscription, fallbacks: list[SubscriptionFallback]) -> list[Contact]:
    """The shopper's usable contacts in the order to try them."""
    found: list[Contact] = []
    # A WeChat subscribe message spends one of the shopper's consents; none left, no message.
    consented = sub.channel != Channel.WECHAT.value or sub.wechat_consents > 0
    if consented and sub.contact_failed_at is None and sub.contact_blob and sub.contact_key_id:
        found.append(Contact(0, sub.channel, sub.contact_key_id, sub.contact_blob, sub.id))
    for f in sorted(fallbacks, key=lambda f: f.rank):
        if f.status == "active" and f.contact_blob and f.contact_key_id:
            found.append(Contact(f.rank, f.channel, f.contact_key_id, f.contact_blob, f.id))
    return found


async def prepare(
    session: AsyncSession, settings: Settings, keys: Keys, ids: list[uuid.UUID]
) -> list[Delivery]:
    rows = list(
        await session.execute(
            select(Notification, Subscription, Product.name, Product.url)
            .join(Subscription, Subscription.id == Notification.subscription_id)
            .outerjoin(Product, Product.sku == Notification.sku)
            .where(Notification.id.in_(ids))
        )
    )
    coupons = await _coupons_of(session, [n.id for n, *_ in rows if n.kind == Kind.FOLLOWUP])
    fallbacks: dict[uuid.UUID, list[SubscriptionFallback]] = defaultdict(list)
    for fallback in await session.scalars(
        select(SubscriptionFallback).where(
            SubscriptionFallback.subscription_id.in_([s.id for _, s, _, _ in rows])
        )
    ):
        fallbacks[fallback.subscription_id].append(fallback)
    now = utcnow()
    return [
        _delivery(settings, keys, n, s, name, url, fallbacks[s.id], now, coupons.get(n.id))
        for n, s, name, url in rows
    ]


async def _coupons_of(
    session: AsyncSession, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    """The coupon (code, description) each follow-up message carries."""
    if not ids:
        return {}
    rows = await session.execute(
        select(Coupon.notification_id, Coupon.code, CouponPool.description)
        .outerjoin(CouponPool, CouponPool.id == Coupon.pool_id)
        .where(Coupon.notification_id.in_(ids))
    )
    return {row[0]: (row[1], row[2]) for row in rows if row[0] is not None}


def _delivery(
    settings: Settings,
    keys: Keys,
    notification: Notification,
    sub: Subscription,
    product_name: str | None,
    product_url: str | None,
    fallbacks: list[SubscriptionFallback],
    now: datetime,
    coupon: tuple[str, str | None] | None = None,
) -> Delivery:
    base = Delivery(notification.id, sub.id, notification.attempts, None)
    if sub.status not in IN_QUEUE:
        return dataclasses.replace(base, skip="not_waiting")
    if notification.kind == Kind.FOLLOWUP and coupon is None:
        return dataclasses.replace(base, skip="no_coupon")  # the shopper was erased meanwhile
    usable = [c for c in contacts_from(sub, fallbacks) if c.rank >= notification.contact_rank]
    if not usable:
        return dataclasses.replace(base, skip="no_contact")
    contact = usable[0]
    base = dataclasses.replace(base, contact=contact)
    if contact.channel == Channel.SMS.value:
        zone = sub.timezone or settings.quiet_hours.default_timezone
        held = hold_until(now, zone, settings.quiet_hours.window)
        if held is not None:
            return dataclasses.replace(base, held_until=held)
    message = _message(
        settings, keys, notification, sub, contact, product_name, product_url, coupon
    )
    return dataclasses.replace(base, message=message)


def _message(
    settings: Settings,
    keys: Keys,
    notification: Notification,
    sub: Subscription,
    contact: Contact,
    product_name: str | None,
    product_url: str | None,
    coupon: tuple[str, str | None] | None,
) -> OutgoingMessage:
    to = keys.cipher.open(Sealed(contact.key_id, contact.blob), contact_aad(contact.row_id))
    base = settings.core.public_base_url.rstrip("/")
    context = MessageContext(
        name=_name(keys, sub),
        product_name=product_name or sub.sku,
        link=f"{base}/r/{keys.tokens.sign(CLICK_TOKEN, notification.id)}",
        unsubscribe_url=f"{base}/u/{keys.tokens.sign(UNSUBSCRIBE_TOKEN, sub.id)}",
        level=notification.level,
        queue_size=notification.queue_size,
        kind=notification.kind,
        coupon_code=coupon[0] if coupon else None,
        coupon_description=coupon[1] if coupon else None,
    )
    rendered = render(contact.channel, sub.locale, context, settings.twilio.sms_max_segments)
    return OutgoingMessage(
        notification_id=notification.id,
        channel=contact.channel,
        to=to,
        to_masked=contacts.mask(Channel(contact.channel), to),
        text=rendered.text,
        subject=rendered.subject,
        html=rendered.html,
        link=context.link,
        unsubscribe_url=context.unsubscribe_url,
        data={
            "product_url": product_url,
            "product_name": context.product_name,
            "locale": sub.locale,
            "kind": notification.kind,
            "coupon_code": context.coupon_code,
        },
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
    throttle: Throttle | None = None,
) -> int:
    """Claim, send and record one batch; returns how many were claimed."""
    lease = timedelta(seconds=settings.waves.claim_lease_seconds)
    # Claim and read in one transaction: one connection checkout and commit per batch, not two.
    async with db.transaction(sessions) as session:
        claimed = await claim(session, ids, lease)
        deliveries = await prepare(session, settings, keys, claimed) if claimed else []
    if not claimed:
        return 0
    messages = [d.message for d in deliveries if d.message is not None]
    renewal = asyncio.create_task(_keep_claimed(sessions, claimed, lease))
    try:
        results = await _send(settings, senders, throttle, messages)
    finally:
        renewal.cancel()
    async with db.transaction(sessions) as session:
        await record(session, deliveries, results)
    return len(claimed)


async def _keep_claimed(
    sessions: async_sessionmaker[AsyncSession], ids: list[uuid.UUID], lease: timedelta
) -> None:
    """Renew the claim while a slow provider works through the batch: the lease can stay
    short (fast takeover after a crash) without expiring under a live worker."""
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        async with db.transaction(sessions) as session:
            await session.execute(
                update(Notification)
                .where(Notification.id.in_(ids), Notification.status == "sending")
                .values(lease_until=utcnow() + lease)
            )


def channel_rate(settings: Settings, channel: str) -> float:
    """The provider's messages-per-second limit for the channel; 0 for none (dev outbox)."""
    if channel == Channel.SMS.value and settings.twilio.configured:
        return settings.twilio.twilio_rate_per_second
    if channel == Channel.EMAIL.value and settings.smtp.configured:
        return settings.smtp.smtp_rate_per_second
    if channel == Channel.WECHAT.value and settings.wechat.configured:
        return settings.wechat.wechat_rate_per_second
    return 0.0


async def _send(
    settings: Settings,
    senders: dict[str, Sender],
    throttle: Throttle | None,
    messages: list[OutgoingMessage],
) -> list[SendResult]:
    by_channel: dict[str, list[OutgoingMessage]] = defaultdict(list)
    for message in messages:
        by_channel[message.channel].append(message)
    results: list[SendResult] = []
    for channel, batch in by_channel.items():
        rate = channel_rate(settings, channel)
        if throttle is None or rate <= 0:
            results += await senders[channel].send_batch(batch)
            continue
        while batch:  # the claim is renewed meanwhile, so waiting for tokens is safe
            grant = await throttle.take(channel, len(batch), rate)
            if grant.granted:
                results += await senders[channel].send_batch(batch[: grant.granted])
                batch = batch[grant.granted :]
            if batch:
                await asyncio.sleep(max(grant.retry_after, 1 / rate))
    return results


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: up to 2, 4, 8 … seconds, capped at 5 minutes."""
    ceiling = min(300.0, 2.0**attempts)
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


async def record(
    session: AsyncSession, deliveries: list[Delivery], results: list[SendResult]
) -> None:
    now = utcnow()
    by_id = {d.notification_id: d for d in deliveries}
    for delivery in deliveries:
        if delivery.skip in ("not_waiting", "no_coupon"):
            await _set(session, delivery.notification_id, status="cancelled", error=delivery.skip)
        elif delivery.skip == "no_contact":  # every contact failed for good
            await _set(session, delivery.notification_id, status="failed", error=delivery.skip)
        elif delivery.held_until is not None:  # not an attempt: the provider was not called
            await _set(
                session,
                delivery.notification_id,
                status="pending",
                next_attempt_at=delivery.held_until,
                attempts=delivery.attempts - 1,
                error="quiet_hours",
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
                    "channel": by_id[r.notification_id].contact.channel,  # type: ignore[union-attr]
                    "contact_rank": by_id[r.notification_id].contact.rank,  # type: ignore[union-attr]
                    "lease_until": None,
                    "error": None,
                }
                for r in sent
            ],
        )
    await _spend_wechat_consents(session, [by_id[r.notification_id] for r in sent])
    for result in results:
        delivery = by_id[result.notification_id]
        if result.outcome is Outcome.TRANSIENT:
            await _retry_or_fail(session, delivery, result, now)
        elif result.outcome is Outcome.PERMANENT:
            await _fall_back(session, delivery, result, now)


async def _spend_wechat_consents(session: AsyncSession, sent: list[Delivery]) -> None:
    spent = [
        d.subscription_id
        for d in sent
        if d.contact is not None
        and d.contact.rank == 0
        and d.contact.channel == Channel.WECHAT.value
    ]
    if spent:
        await session.execute(
            update(Subscription)
            .where(Subscription.id.in_(spent))
            .values(wechat_consents=Subscription.wechat_consents - 1)
        )


async def _set(session: AsyncSession, notification_id: uuid.UUID, **values: Any) -> None:
    values.setdefault("lease_until", None)
    await session.execute(
        update(Notification).where(Notification.id == notification_id).values(**values)
    )


async def _retry_or_fail(
    session: AsyncSession, delivery: Delivery, result: SendResult, now: datetime
) -> None:
    if delivery.attempts < MAX_ATTEMPTS:
        await _set(
            session,
            delivery.notification_id,
            status="pending",
            next_attempt_at=now + backoff(delivery.attempts),
            error=result.error,
        )
    else:
        await _set(session, delivery.notification_id, status="failed", error=result.error)


async def _fall_back(
    session: AsyncSession, delivery: Delivery, result: SendResult, now: datetime
) -> None:
    """The contact will never work: remember that, and try the shopper's next contact."""
    contact = delivery.contact
    assert contact is not None
    if contact.rank == 0:
        await session.execute(
            update(Subscription)
            .where(Subscription.id == delivery.subscription_id)
            .values(contact_failed_at=now)
        )
    else:
        await session.execute(
            update(SubscriptionFallback)
            .where(SubscriptionFallback.id == contact.row_id)
            .values(status="failed")
        )
    await _set(
        session,
        delivery.notification_id,
        status="pending",  # the next claim picks the next usable contact, or cancels
        contact_rank=contact.rank + 1,
        attempts=0,
        next_attempt_at=now,
        error=result.error,
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
