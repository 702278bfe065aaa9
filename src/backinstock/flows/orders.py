"""An order becomes conversions: did a back-in-stock message sell?

An order converts a subscription for each SKU it contains when, in this order of trust:

1. its ``notification_token`` (carried by the tracked link) names a message about that SKU
   sent within the attribution window;
2. its ``coupon_code`` is a coupon we issued, not yet redeemed (proof enough: no window); it
   converts the coupon's SKU, with the whole order's revenue if that SKU is not in the order;
3. the buyer's phone, email or openid (by blind index) or customer id matches a subscription
   to that SKU with a message sent within the window; the latest message wins.

An order whose token names a message with a hold on one of its SKUs consumes that hold
(restocks), in the same transaction.

"Saved by a substitute": an order whose ``notification_token`` names a substitute message
sent within the attribution window records, for each of its SKUs that message offered, a
substitute sale for the message's shopper and the SKU they wait for. It converts nothing:
the shopper keeps waiting for what they asked for (and may stop on their page).

``order_id`` is the idempotency key: the first request stores its answer, a replay gets the
same answer and changes nothing, and two racing requests with one id write one order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backinstock import identity
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.conversions import ledger
from backinstock.conversions.models import Method
from backinstock.conversions.schemas import (
    ConversionOut,
    CouponUse,
    OrderCustomer,
    OrderIn,
    OrderOut,
    SavedOut,
)
from backinstock.coupons import service as coupons
from backinstock.coupons.models import Redemption
from backinstock.crypto import Keys
from backinstock.db import utcnow
from backinstock.dispatch.models import Kind, Notification, SubstituteOffer
from backinstock.dispatch.models import Status as MessageStatus
from backinstock.fields import refuse_future
from backinstock.identity import CLICK_TOKEN
from backinstock.money import money
from backinstock.ops import metrics
from backinstock.restocks import holds
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.models import Subscription, SubscriptionFallback

# Shop and service clocks differ a little: a message "sent" seconds after the order was
# placed may still be the one the shopper followed.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Touch:
    """The message (or coupon) an order's SKU is attributed to."""

    subscription_id: uuid.UUID
    notification_id: uuid.UUID | None
    channel: str | None
    method: Method


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


async def record(
    session: AsyncSession, settings: Settings, keys: Keys, payload: OrderIn
) -> tuple[OrderOut, bool]:
    """Record the order and its conversions; returns (answer, replayed)."""
    refuse_future("occurred_at", payload.occurred_at, settings.core.max_clock_skew_seconds)
    stored = await ledger.stored_answer(session, payload.order_id)
    if stored is not None:
        return stored, True
    now = utcnow()
    occurred = payload.occurred_at or now
    lines = _lines_by_sku(payload)
    total = sum(lines.values(), Decimal(0))
    order_pk = await ledger.insert_order(
        session, payload.order_id, payload.currency, total, occurred, now
    )
    if order_pk is None:  # the same order_id committed by a concurrent request
        stored = await ledger.stored_answer(session, payload.order_id)
        assert stored is not None
        return stored, True
    # The coupon first: its row lock decides which of two racing orders redeems it.
    coupon_use, coupon_touch = await _redeem_coupon(session, payload, order_pk, occurred)
    window = _window(settings, occurred)
    touches = await _attribute(session, settings, keys, payload, set(lines), window, coupon_touch)
    await _consume_hold(session, keys, payload, set(lines))
    conversions = [
        await _convert(session, order_pk, sku, touch, lines.get(sku, total), payload, occurred)
        for sku, touch in sorted(touches.items())
    ]
    saved = await _saved_by_substitute(session, keys, payload, order_pk, lines, window, occurred)
    answer = OrderOut(
        order_id=payload.order_id,
        received_at=now,
        occurred_at=occurred,
        total=money(total, exact=True),
        currency=payload.currency,
        conversions=conversions,
        coupon=coupon_use,
        saved_by_substitute=saved,
    )
    await ledger.store_answer(session, order_pk, answer)
    return answer, False


def _lines_by_sku(payload: OrderIn) -> dict[str, Decimal]:
    lines: dict[str, Decimal] = defaultdict(Decimal)
    for item in payload.items:
        lines[item.sku] += item.unit_price * item.quantity
    return dict(lines)


def _window(settings: Settings, occurred: datetime) -> Window:
    span = timedelta(seconds=settings.conversion.attribution_window_seconds)
    return Window(occurred - span, occurred + CLOCK_SKEW)


async def _attribute(
    session: AsyncSession,
    settings: Settings,
    keys: Keys,
    payload: OrderIn,
    skus: set[str],
    window: Window,
    coupon_touch: tuple[str, Touch] | None,
) -> dict[str, Touch]:
    touches: dict[str, Touch] = {}
    if payload.notification_token:
        touches.update(await _by_token(session, keys, payload.notification_token, skus, window))
    if coupon_touch is not None:
        sku, touch = coupon_touch
        touches.setdefault(sku, touch)
    remaining = skus - set(touches)
    if payload.customer and remaining:
        touches.update(
            await _by_customer(session, settings, keys, payload.customer, remaining, window)
        )
    return touches


async def _by_token(
    session: AsyncSession, keys: Keys, token: str, skus: set[str], window: Window
) -> dict[str, Touch]:
    notification_id = keys.tokens.verify(CLICK_TOKEN, token)
    if notification_id is None:
        return {}
    row = (
        await session.execute(
            select(
                Notification.id,
                Notification.subscription_id,
                Notification.channel,
                Notification.sku,
            ).where(
                Notification.id == notification_id,
                Notification.sku.in_(skus),
                Notification.sent_at.between(window.start, window.end),
            )
        )
    ).first()
    if row is None:
        return {}
    return {row.sku: Touch(row.subscription_id, row.id, row.channel, Method.TRACKED_LINK)}


async def _saved_by_substitute(
    session: AsyncSession,
    keys: Keys,
    payload: OrderIn,
    order_pk: uuid.UUID,
    lines: dict[str, Decimal],
    window: Window,
    occurred: datetime,
) -> list[SavedOut]:
    """The order's SKUs that the substitute message its token names offered: each a
    substitute sale for that message's shopper, with that SKU's lines as its revenue."""
    if not payload.notification_token:
        return []
    notification_id = keys.tokens.verify(CLICK_TOKEN, payload.notification_token)
    if notification_id is None:
        return []
    rows = await session.execute(
        select(
            SubstituteOffer.substitute_sku,
            Notification.sku,
            Notification.subscription_id,
            Notification.channel,
        )
        .join(Notification, Notification.id == SubstituteOffer.notification_id)
        .where(
            SubstituteOffer.notification_id == notification_id,
            SubstituteOffer.substitute_sku.in_(set(lines)),
            Notification.kind == Kind.SUBSTITUTE,
            Notification.sent_at.between(window.start, window.end),
        )
        .order_by(SubstituteOffer.position)
    )
    saved: list[SavedOut] = []
    for bought, waited_for, subscription_id, channel in rows:
        await ledger.add_substitute_sale(
            session,
            order_pk,
            sku=waited_for,
            substitute_sku=bought,
            subscription_id=subscription_id,
            notification_id=notification_id,
            channel=channel,
            revenue=lines[bought],
            currency=payload.currency,
            saved_at=occurred,
        )
        metrics.SAVED_BY_SUBSTITUTE.labels(channel or "unknown").inc()
        saved.append(
            SavedOut(
                sku=bought,
                substitute_for=waited_for,
                subscription_id=subscription_id,
                notification_id=notification_id,
                channel=channel,
                revenue=money(lines[bought], exact=True),
            )
        )
    return saved


async def _consume_hold(
    session: AsyncSession, keys: Keys, payload: OrderIn, skus: set[str]
) -> None:
    """The order carries the shopper's token: the unit held for them (if the order has its
    SKU and the hold is still held) is theirs, in the order's transaction."""
    if not payload.notification_token:
        return
    notification_id = keys.tokens.verify(CLICK_TOKEN, payload.notification_token)
    if notification_id is not None:
        await holds.consume(session, notification_id, skus)


def _customer_digests(settings: Settings, keys: Keys, customer: OrderCustomer) -> list[bytes]:
    given = [
        (Channel.EMAIL, customer.email),
        (Channel.SMS, customer.phone),
        (Channel.WECHAT, customer.wechat_openid),
    ]
    # A malformed contact in an order matches nobody; the order still counts.
    return identity.lookup(settings, keys, [(channel, raw) for channel, raw in given if raw])


async def _by_customer(
    session: AsyncSession,
    settings: Settings,
    keys: Keys,
    customer: OrderCustomer,
    skus: set[str],
    window: Window,
) -> dict[str, Touch]:
    digests = _customer_digests(settings, keys, customer)
    matches: list[ColumnElement[bool]] = []
    if digests:
        by_fallback = select(SubscriptionFallback.subscription_id).where(
            SubscriptionFallback.contact_index.in_(digests)
        )
        matches += [Subscription.contact_index.in_(digests), Subscription.id.in_(by_fallback)]
    if customer.customer_id:
        matches.append(Subscription.customer_id == customer.customer_id)
    if not matches:
        return {}
    rows = await session.execute(
        select(
            Notification.id,
            Notification.subscription_id,
            Notification.channel,
            Notification.sku,
            Subscription.contact_index,
        )
        .join(Subscription, Subscription.id == Notification.subscription_id)
        .where(
            Notification.sku.in_(skus),
            Notification.status == MessageStatus.SENT,
            Notification.kind != Kind.CONFIRMATION,  # asking to confirm sells nothing
            Notification.sent_at.between(window.start, window.end),
            or_(*matches),
        )
        .order_by(Notification.sent_at.desc(), Notification.id.desc())
    )
    touches: dict[str, Touch] = {}
    for row in rows:
        if row.sku in touches:
            continue  # rows come latest first: the latest message of each SKU wins
        by_contact = row.contact_index in digests or not customer.customer_id
        method = Method.CONTACT if by_contact else Method.CUSTOMER_ID
        touches[row.sku] = Touch(row.subscription_id, row.id, row.channel, method)
    return touches


async def _redeem_coupon(
    session: AsyncSession, payload: OrderIn, order_pk: uuid.UUID, occurred: datetime
) -> tuple[CouponUse | None, tuple[str, Touch] | None]:
    """Mark the order's coupon redeemed; a redeemed coupon converts its shopper even when
    the order holds another SKU (the coupon brought the shopper back)."""
    code = payload.coupon_code
    if not code:
        return None, None
    redemption, coupon = await coupons.redeem(session, code, order_pk, occurred)
    if coupon is None:
        return CouponUse(code=code, status=redemption.value), None
    metrics.COUPONS_REDEEMED.inc()
    touch = None
    if coupon.subscription_id is not None and coupon.sku is not None:
        touch = (
            coupon.sku,
            Touch(coupon.subscription_id, coupon.notification_id, coupon.channel, Method.COUPON),
        )
    return CouponUse(code=code, status=Redemption.REDEEMED.value), touch


async def _convert(
    session: AsyncSession,
    order_pk: uuid.UUID,
    sku: str,
    touch: Touch,
    revenue: Decimal,
    payload: OrderIn,
    occurred: datetime,
) -> ConversionOut:
    await ledger.add_conversion(
        session,
        order_pk,
        sku=sku,
        subscription_id=touch.subscription_id,
        notification_id=touch.notification_id,
        channel=touch.channel,
        method=touch.method,
        revenue=revenue,
        currency=payload.currency,
        converted_at=occurred,
    )
    # A shopper who bought stops waiting: no further restock messages, and no follow-up.
    await lifecycle.convert(session, touch.subscription_id, utcnow())
    metrics.CONVERSIONS.labels(touch.channel or "unknown", touch.method.value).inc()
    return ConversionOut(
        sku=sku,
        subscription_id=touch.subscription_id,
        notification_id=touch.notification_id,
        channel=touch.channel,
        method=touch.method.value,
        revenue=money(revenue, exact=True),
    )
