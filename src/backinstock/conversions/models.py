from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, Money, UTCDateTime, new_id, utcnow


class Method(enum.StrEnum):
    """How an order was tied to the shopper, most trusted first."""

    TRACKED_LINK = "token"  # the notification_token the tracked link carries
    COUPON = "coupon"  # a coupon we issued
    CONTACT = "contact"  # the buyer's phone, email or openid, by blind index
    CUSTOMER_ID = "customer_id"  # the shop's customer id


class Order(Base):
    """An order reported by the shop. ``order_id`` is the shop's id and the idempotency key:
    a replay answers with the stored ``response`` and changes nothing."""

    __tablename__ = "orders"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    order_id: Mapped[str] = mapped_column(String(128), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[Decimal] = mapped_column(Money)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    response: Mapped[str] = mapped_column(Text)


class Conversion(Base):
    """A purchase of a SKU attributed to a subscription (one per order and SKU)."""

    __tablename__ = "conversions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    order_pk: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("orders.id", ondelete="CASCADE"))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="SET NULL"), nullable=True, index=True
    )
    notification_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="SET NULL"), nullable=True
    )
    sku: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # How the order was tied to the shopper (Method).
    method: Mapped[str] = mapped_column(String(16))
    revenue: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    converted_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("order_pk", "sku"),
        Index("ix_conversions_converted_at", "converted_at"),
        Index("ix_conversions_sku_converted_at", "sku", "converted_at"),
    )


class SubstituteSale(Base):
    """An order of a substitute the shopper was offered while waiting for a sold-out SKU
    ("saved by a substitute"): the order carries the token of the substitute message that
    named ``substitute_sku``. ``sku`` is the SKU the shopper waits for, so figures narrowed
    to it count the sales its substitutes saved. Not a conversion: the shopper did not get
    what they asked for, and keeps waiting for it."""

    __tablename__ = "substitute_sales"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    order_pk: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("orders.id", ondelete="CASCADE"))
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="SET NULL"), nullable=True
    )
    notification_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="SET NULL"), nullable=True
    )
    sku: Mapped[str] = mapped_column(String(128))
    substitute_sku: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    revenue: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("order_pk", "substitute_sku"),
        Index("ix_substitute_sales_saved_at", "saved_at"),
        Index("ix_substitute_sales_sku_saved_at", "sku", "saved_at"),
    )
