"""A sent message becomes a coupon follow-up: FOLLOWUP_AFTER_SECONDS (or the SKU's own
``followup_after_seconds``, ``catalog.policy``) after a restock message, a shopper who has
not bought while the SKU is still in stock gets one coupon, in one follow-up message, ever.

The sweeper calls :func:`plan_due` every tick. Each restock message is decided once
(``followed_up_at``), under ``FOR UPDATE SKIP LOCKED`` so that any number of workers split
the due messages between them. The follow-up itself is an outbox row like any other
message (kind ``followup``), so it is sent, retried, held in quiet hours and recovered the
same way; the coupon it carries is issued in the same transaction that plans it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import db
from backinstock.catalog import policy as product_policy
from backinstock.catalog.models import ProductPolicy
from backinstock.config import Settings
from backinstock.coupons import service as coupons
from backinstock.coupons.models import Coupon
from backinstock.dispatch import notifications
from backinstock.dispatch.models import Kind, Notification
from backinstock.dispatch.models import Status as MessageStatus
from backinstock.restocks.service import current_level
from backinstock.subscriptions.models import Status, Subscription

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Due:
    notification_id: uuid.UUID
    subscription_id: uuid.UUID
    wave_id: uuid.UUID | None  # a restock message's (always set: only confirmations lack one)
    sku: str
    step: int
    queue_size: int
    channel: str | None
    status: str  # the subscription's
    has_coupon: bool


async def plan_due(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> list[uuid.UUID]:
    """Decide the restock messages due at ``now``; returns the follow-up messages planned."""
    try:
        async with db.transaction(sessions) as session:
            return await _plan(session, settings, now)
    except IntegrityError:
        # Two restock messages of one shopper decided at once by two workers: the coupon's
        # unique subscription refused the second. The next tick sees the coupon and skips.
        log.info("followup_race_retried")
        return []


async def _plan(session: AsyncSession, settings: Settings, now: datetime) -> list[uuid.UUID]:
    due = await _due(session, settings, now, settings.conversion.followup_batch)
    planned: list[uuid.UUID] = []
    levels: dict[str, int] = {}
    served: set[uuid.UUID] = set()  # a shopper told in two waves is due twice in one batch
    for item in due:
        if item.sku not in levels:
            levels[item.sku] = await current_level(session, item.sku)
        if _wanted(item, levels[item.sku]) and item.subscription_id not in served:
            served.add(item.subscription_id)
            planned.append(await _plan_one(session, settings, item, levels[item.sku], now))
    if due:
        await notifications.mark_followed_up(session, [d.notification_id for d in due], now)
    return planned


def _wanted(item: Due, level: int) -> bool:
    # Converted, unsubscribed or erased shoppers get nothing; nor does anyone while the SKU
    # is sold out (a coupon for what cannot be bought only annoys).
    return item.status == Status.NOTIFIED.value and not item.has_coupon and level > 0


async def _due(session: AsyncSession, settings: Settings, now: datetime, limit: int) -> list[Due]:
    """Sent restock messages not yet decided whose SKU's delay (its own, else the setting)
    has passed. Each row is compared with its SKU's delay in the statement (the policies
    joined by SKU); the shortest delay of all bounds the scan of the undecided messages'
    index by ``sent_at``, as a single delay did."""
    shortest = await product_policy.shortest_followup(session, settings)
    own_delay = db.seconds_before(session, now, product_policy.followup_after(settings))
    has_coupon = exists().where(Coupon.subscription_id == Notification.subscription_id)
    rows = await session.execute(
        select(
            Notification.id,
            Notification.subscription_id,
            Notification.wave_id,
            Notification.sku,
            Notification.step,
            Notification.queue_size,
            Notification.channel,
            Subscription.status,
            has_coupon,
        )
        .join(Subscription, Subscription.id == Notification.subscription_id)
        .outerjoin(ProductPolicy, ProductPolicy.sku == Notification.sku)
        .where(
            Notification.kind == Kind.RESTOCK,
            Notification.status == MessageStatus.SENT,
            Notification.followed_up_at.is_(None),
            Notification.sent_at <= now - timedelta(seconds=shortest),
            Notification.sent_at <= own_delay,
        )
        .order_by(Notification.sent_at)
        .limit(limit)
        .with_for_update(of=Notification, skip_locked=True)
    )
    return [Due(*row) for row in rows]


async def _plan_one(
    session: AsyncSession, settings: Settings, item: Due, level: int, now: datetime
) -> uuid.UUID:
    followup_id = await notifications.plan_followup(session, item, level=level, now=now)
    await coupons.issue(
        session,
        settings.conversion.coupon_prefix,
        subscription_id=item.subscription_id,
        notification_id=followup_id,
        sku=item.sku,
        channel=item.channel,
        now=now,
    )
    return followup_id
