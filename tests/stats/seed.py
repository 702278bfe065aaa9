"""Rows for the figures, written straight into the database with chosen timestamps.

Subscriptions go through the service's own row builder (sealed contact, blind index);
everything else is plain ORM rows.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import db
from backinstock.catalog.models import Product
from backinstock.contacts import Channel
from backinstock.conversions.models import Conversion, Order
from backinstock.coupons.models import Coupon
from backinstock.db import new_id
from backinstock.dispatch.models import Notification
from backinstock.identity import NormalizedContact
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from backinstock.subscriptions.statements import INSERT_SUBSCRIPTION

T0 = datetime(2026, 9, 1, tzinfo=UTC)
# Subscriptions behind seeded messages are this old, out of every period the tests ask for.
EARLY = T0 - timedelta(days=365)


def at(hours: float = 0, days: float = 0) -> datetime:
    """T0 (2026-09-01T00:00:00Z) plus an offset."""
    return T0 + timedelta(hours=hours, days=days)


def _contact(channel: Channel, n: int) -> str:
    if channel is Channel.SMS:
        return f"+86138{n:08d}"
    if channel is Channel.EMAIL:
        return f"shopper{n}@example.com"
    return f"openid_{n:020d}"


@dataclass
class Seeder:
    runtime: Runtime
    session: AsyncSession
    _count: int = 0
    _waves: dict[str, uuid.UUID] = field(default_factory=dict)

    async def product(self, sku: str, name: str | None) -> None:
        self.session.add(Product(sku=sku, name=name))
        await self.session.flush()

    async def subscription(
        self,
        sku: str = "SKU-1",
        channel: str = "sms",
        created_at: datetime = T0,
        status: str = "waiting",
        attributes: dict[str, str] | None = None,
    ) -> uuid.UUID:
        self._count += 1
        contact = NormalizedContact(Channel(channel), _contact(Channel(channel), self._count))
        payload = SubscriptionCreate(
            sku=sku, channel=contact.channel, contact=contact.value, attributes=attributes or {}
        )
        index = self.runtime.keys.blind_index.digest(contact.index_form)
        row = _NewSubscription.build(self.runtime.keys, payload, contact, index)
        await self.session.execute(INSERT_SUBSCRIPTION, {**row.params, "created_at": created_at})
        if status != "waiting":
            await self.session.execute(
                update(Subscription).where(Subscription.id == row.id).values(status=status)
            )
        return row.id

    async def wave(self, sku: str = "SKU-1", opened_at: datetime = T0) -> uuid.UUID:
        wave = Wave(sku=sku, opened_at=opened_at, restock_id=new_id(), status="closed")
        self.session.add(wave)
        await self.session.flush()
        return wave.id

    async def message(
        self,
        sku: str = "SKU-1",
        channel: str = "sms",
        *,
        created_at: datetime = T0,
        sent_at: datetime | None = None,
        status: str = "sent",
        kind: str = "restock",
        delivery_status: str | None = None,
        clicked_at: datetime | None = None,
        subscription_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """A notification; by default to a new subscriber, in a wave of its own per SKU."""
        if subscription_id is None:
            subscription_id = await self.subscription(sku, channel, EARLY, "notified")
        if sku not in self._waves:
            self._waves[sku] = await self.wave(sku, created_at)
        row = Notification(
            subscription_id=subscription_id,
            wave_id=self._waves[sku],
            sku=sku,
            kind=kind,
            step=1,
            level=1,
            queue_size=1,
            channel=channel,
            status=status,
            created_at=created_at,
            sent_at=sent_at if sent_at is not None or status != "sent" else created_at,
            delivery_status=delivery_status,
            clicked_at=clicked_at,
            click_count=0 if clicked_at is None else 1,
        )
        self.session.add(row)
        await self.session.flush()
        return row.id

    async def conversion(
        self,
        subscription_id: uuid.UUID | None,
        *,
        sku: str = "SKU-1",
        channel: str | None = "sms",
        revenue: str = "99.00",
        currency: str = "CNY",
        converted_at: datetime = T0,
    ) -> None:
        order = Order(
            order_id=f"o-{new_id()}",
            currency=currency,
            total=Decimal(revenue),
            occurred_at=converted_at,
            response="{}",
        )
        self.session.add(order)
        await self.session.flush()
        self.session.add(
            Conversion(
                order_pk=order.id,
                subscription_id=subscription_id,
                sku=sku,
                channel=channel,
                method="token",
                revenue=Decimal(revenue),
                currency=currency,
                converted_at=converted_at,
            )
        )
        await self.session.flush()

    async def coupon(
        self,
        *,
        sku: str = "SKU-1",
        channel: str = "sms",
        issued_at: datetime | None = T0,
        redeemed_at: datetime | None = None,
        subscription_id: uuid.UUID | None = None,
    ) -> None:
        self._count += 1
        self.session.add(
            Coupon(
                subscription_id=subscription_id,
                code=f"BIS-{self._count:06d}",
                sku=sku,
                channel=channel,
                issued_at=issued_at,
                redeemed_at=redeemed_at,
            )
        )
        await self.session.flush()


@asynccontextmanager
async def seeding(runtime: Runtime) -> AsyncIterator[Seeder]:
    """A Seeder whose rows are committed when the block ends."""
    async with db.transaction(runtime.sessions) as session:
        yield Seeder(runtime, session)


async def funnel_scenario(runtime: Runtime) -> None:
    """A week from T0 of every kind of row, with edge cases on each side of the period.

    In [T0, T0 + 7 days), unfiltered: subscribed 5, waiting 2; notified 4 (3 SKU-1 sms,
    1 SKU-2 email), delivered 3, failed 2, clicked 2, median 25 s; converted 2; revenue
    CNY 198.50 and USD 50.00; coupons issued 2, redeemed 2.
    """
    async with seeding(runtime) as s:
        a = await s.subscription("SKU-1", "sms", at(0.5), "converted")
        b = await s.subscription("SKU-2", "email", at(0.5), "converted")
        await s.subscription("SKU-1", "sms", at(2), "waiting")
        await s.subscription("SKU-1", "sms", at(3), "notified")
        await s.subscription("SKU-1", "sms", at(4), "unsubscribed")
        await s.subscription("SKU-1", "sms", at(days=-1), "waiting")  # before
        await s.subscription("SKU-1", "sms", at(days=7), "waiting")  # at until: after

        sec = timedelta(seconds=1)
        await s.message(created_at=at(1) - 30 * sec, sent_at=at(1), delivery_status="delivered",
                        clicked_at=at(1.5))  # fmt: skip
        await s.message(created_at=at(2) - 10 * sec, sent_at=at(2))
        await s.message(created_at=at(3) - 50 * sec, sent_at=at(3), delivery_status="undelivered")
        await s.message(created_at=at(4), status="failed")
        await s.message("SKU-2", "email", created_at=at(6) - 20 * sec, sent_at=at(6),
                        clicked_at=at(7))  # fmt: skip
        await s.message(created_at=at(days=-1), status="failed")  # before
        await s.message(created_at=at(days=-1), sent_at=at(days=-1) + sec)  # before
        await s.message(created_at=at(days=7) - sec, sent_at=at(days=7))  # at until: after
        await s.message(created_at=at(5), kind="followup")  # not a restock message
        await s.message(created_at=at(5), status="pending")  # not sent yet

        await s.conversion(a, revenue="99.00", converted_at=at(10))
        await s.conversion(a, revenue="99.00", converted_at=at(11))  # same shopper again
        await s.conversion(None, revenue="0.50", converted_at=at(12))  # erased shopper
        await s.conversion(b, sku="SKU-2", channel="email", revenue="50.00", currency="USD",
                           converted_at=at(12))  # fmt: skip
        await s.conversion(a, revenue="99.00", converted_at=at(days=-2))  # before

        await s.coupon(issued_at=at(1), redeemed_at=at(20))
        await s.coupon(issued_at=at(days=-3), redeemed_at=at(2))
        await s.coupon(sku="SKU-2", channel="email", issued_at=at(3))
        await s.coupon(issued_at=None)  # uploaded, never handed out
        await s.coupon(issued_at=at(days=8))  # after
