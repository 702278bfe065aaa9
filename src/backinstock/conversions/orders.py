"""Orders and attribution: did a back-in-stock message sell?

An order converts a subscription for each SKU it contains when, in this order of trust:

1. its ``notification_token`` (carried by the tracked link) names a message about that SKU
   sent within the attribution window;
2. its ``coupon_code`` is a coupon we issued, not yet redeemed (proof enough: no window); it
   converts the coupon's SKU, with the whole order's revenue if that SKU is not in the order;
3. the buyer's phone, email or openid (by blind index) or customer id matches a subscription
   to that SKU with a message sent within the window; the latest message wins.

``order_id`` is the idempotency key: the first request stores its answer, a replay gets the
same answer and changes nothing, and two racing requests with one id write one order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backinstock import identity
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.conversions.models import Conversion, Order
from backinstock.conversions.schemas import (
    ConversionOut,
    CouponUse,
    OrderCustomer,
    OrderIn,
    OrderOut,
)
from backinstock.coupons.models import Coupon
from backinstock.crypto import Keys
from backinstock.db import insert_for, new_id, utcnow
from backinstock.dispatch.models import Notification
from backinstock.fields import refuse_future
from backinstock.identity import CLICK_TOKEN
from backinstock.money import money
from backinstock.ops import metrics
from backinstock.subscriptions.models import IN_QUEUE, Status, Subscription, SubscriptionFallback

# Shop and service clocks differ a little: a message "sent" seconds after the order was
# placed may still be the one the shopper followed.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Touch:
    """The message (or coupon) an order's SKU is attributed to."""

    subscription_id: uuid.UUID
    notification_id: uuid.UUID | None
    channel: str | None
    method: str


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


async def record(
    session: AsyncSession, settings: Settings, keys: Keys, payload: OrderIn
) -> tuple[OrderOut, bool]:
    """Record the order and its conversions; returns (answer, replayed)."""
    refuse_future("occurred_at", payload.occurred_at, settings.core.max_clock_skew_seconds)
    stored = await _stored_answer(session, payload.order_id)
    if stored is not None:
        return stored, True
    now = utcnow()
    occurred = payload.occurred_at or now
    lines = _lines_by_sku(payload)
    total = sum(lines.values(), Decimal(0))
    order_pk = await _insert_order(session, payload, total, occurred, now)
    if order_pk is None:  # the same order_id committed by a concurrent request
        stored = await _stored_answer(session, payload.order_id)
        assert stored is not None
        return stored, True
    # The coupon first: its row lock decides which of two racing orders redeems it.
    coupon_use, coupon_touch = await _redeem_coupon(session, payload, order_pk, occurred)
    window = _window(settings, occurred)
    touches = await _attribute(session, settings, keys, payload, set(lines), window, coupon_touch)
    conversions = [
        await _convert(session, order_pk, sku, touch, lines.get(sku, total), payload, occurred)
        for sku, touch in sorted(touches.items())
    ]
    answer = OrderOut(
        order_id=payload.order_id,
        received_at=now,
        occurred_at=occurred,
        total=money(total, exact=True),
        currency=payload.currency,
        conversions=conversions,
        coupon=coupon_use,
    )
    await session.execute(
        update(Order).where(Order.id == order_pk).values(response=answer.model_dump_json())
    )
    return answer, False


async def _stored_answer(session: AsyncSession, order_id: str) -> OrderOut | None:
    stored = await session.scalar(select(Order.response).where(Order.order_id == order_id))
    return OrderOut.model_validate_json(stored) if stored else None


def _lines_by_sku(payload: OrderIn) -> dict[str, Decimal]:
    lines: dict[str, Decimal] = defaultdict(Decimal)
    for item in payload.items:
        lines[item.sku] += item.unit_price * item.quantity
    return dict(lines)


def _window(settings: Settings, occurred: datetime) -> Window:
    span = timedelta(seconds=settings.conversion.attribution_window_seconds)
    return Window(occurred - span, occurred + CLOCK_SKEW)


async def _insert_order(
    session: AsyncSession, payload: OrderIn, total: Decimal, occurred: datetime, now: datetime
) -> uuid.UUID | None:
    # ON CONFLICT DO NOTHING waits for a concurrent insert of the same order_id to commit,
    # then inserts nothing: exactly one request attributes the order.
    return await session.scalar(  # type: ignore[no-any-return]
        insert_for(session, Order)
        .values(
            id=new_id(),
            order_id=payload.order_id,
            currency=payload.currency,
            total=total,
            occurred_at=occurred,
            received_at=now,
            response="",
        )
        .on_conflict_do_nothing(index_elements=[Order.order_id])
        .returning(Order.id)
    )


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
    return {row.sku: Touch(row.subscription_id, row.id, row.channel, "token")}


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
            Notification.status == "sent",
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
        method = "contact" if by_contact else "customer_id"
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
    coupon = await session.scalar(select(Coupon).where(Coupon.code == code).with_for_update())
    if coupon is None:
        return CouponUse(code=code, status="unknown"), None
    if coupon.issued_at is None:
        return CouponUse(code=code, status="not_issued"), None
    if coupon.redeemed_at is not None:
        return CouponUse(code=code, status="already_redeemed"), None
    coupon.redeemed_at = occurred
    coupon.order_id = order_pk
    metrics.COUPONS_REDEEMED.inc()
    touch = None
    if coupon.subscription_id is not None and coupon.sku is not None:
        touch = (
            coupon.sku,
            Touch(coupon.subscription_id, coupon.notification_id, coupon.channel, "coupon"),
        )
    return CouponUse(code=code, status="redeemed"), touch


async def _convert(
    session: AsyncSession,
    order_pk: uuid.UUID,
    sku: str,
    touch: Touch,
    revenue: Decimal,
    payload: OrderIn,
    occurred: datetime,
) -> ConversionOut:
    session.add(
        Conversion(
            id=new_id(),
            order_pk=order_pk,
            subscription_id=touch.subscription_id,
            notification_id=touch.notification_id,
            sku=sku,
            channel=touch.channel,
            method=touch.method,
            revenue=revenue,
            currency=payload.currency,
            converted_at=occurred,
        )
    )
    # A shopper who bought stops waiting: no further restock messages, and no follow-up.
    await session.execute(
        update(Subscription)
        .where(Subscription.id == touch.subscription_id, Subscription.status.in_(IN_QUEUE))
        .values(status=Status.CONVERTED.value, stopped_at=utcnow())
    )
    metrics.CONVERSIONS.labels(touch.channel or "unknown", touch.method).inc()
    return ConversionOut(
        sku=sku,
        subscription_id=touch.subscription_id,
        notification_id=touch.notification_id,
        channel=touch.channel,
        method=touch.method,
        revenue=money(revenue, exact=True),
    )
