from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backinstock.db import Base, UTCDateTime, new_id, partial_index, utcnow


class Status(enum.StrEnum):
    # Made through a publishable key (or a channel in DOUBLE_OPT_IN_CHANNELS): waits for the
    # shopper to confirm before it takes its place in the queue.
    PENDING = "pending"
    WAITING = "waiting"
    NOTIFIED = "notified"
    CONVERTED = "converted"
    UNSUBSCRIBED = "unsubscribed"
    EXPIRED = "expired"


class Priority(enum.StrEnum):
    VIP = "vip"
    STANDARD = "standard"


class FallbackStatus(enum.StrEnum):
    ACTIVE = "active"  # tried, in rank order, once the contacts before it failed
    FAILED = "failed"  # a provider rejected it for good, or the number opted out


PRIORITY_RANK = {Priority.VIP: 0, Priority.STANDARD: 1}

# Still in the SKU's queue: notified-but-not-converted shoppers keep their place.
IN_QUEUE = (Status.WAITING.value, Status.NOTIFIED.value)
# Not stopped: one of these per SKU and contact (a pending request, or its queued successor).
ACTIVE = (Status.PENDING.value, *IN_QUEUE)
# No longer waiting, for good: what retention erases once RETENTION_DAYS have passed.
STOPPED = (Status.CONVERTED.value, Status.UNSUBSCRIBED.value, Status.EXPIRED.value)


def _listed(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


QUEUED = _listed(IN_QUEUE)  # for textual SQL: "'waiting', 'notified'"
IN_QUEUE_PREDICATE = text(f"status IN ({QUEUED})")
ACTIVE_SQL = _listed(ACTIVE)  # "'pending', 'waiting', 'notified'"
ACTIVE_PREDICATE = text(f"status IN ({ACTIVE_SQL})")
UNCONFIRMED = f"status = '{Status.PENDING}'"
EXPIRY_CANDIDATE = f"status = '{Status.NOTIFIED}'"
ERASURE_CANDIDATE = f"contact_blob IS NOT NULL AND status IN ({_listed(STOPPED)})"


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    sku: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    # The contact, sealed (AES-256-GCM) and blind-indexed; NULL once erased by retention.
    contact_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    contact_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    contact_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    # Set when a provider rejected the primary contact for good (invalid, opted out).
    contact_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # WeChat subscribe messages: each consent the shopper gave allows exactly one message.
    wechat_consents: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Name and consent IP, sealed together as JSON.
    profile_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    profile_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    locale: Mapped[str] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    customer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    priority: Mapped[str] = mapped_column(String(16))
    priority_rank: Mapped[int] = mapped_column(SmallInteger)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Non-identifying values for templates and figures (subscriptions.attributes); the
    # segment among them again in a column of its own, indexed for filtering and grouping.
    attributes: Mapped[dict[str, str] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    segment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consent_text_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=Status.WAITING.value)
    notification_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the shopper confirmed a pending request (double opt-in): the consent's record.
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    fallbacks: Mapped[list[SubscriptionFallback]] = relationship(
        back_populates="subscription",
        order_by="SubscriptionFallback.rank",
        cascade="all, delete-orphan",
        lazy="raise",
    )

    __table_args__ = (
        # One pending or waiting subscription per SKU and contact: the database, not luck,
        # dedupes (a pending request confirmed becomes the waiting one).
        Index(
            "uq_subscriptions_active_contact",
            "sku",
            "contact_index",
            unique=True,
            postgresql_where=ACTIVE_PREDICATE,
            sqlite_where=ACTIVE_PREDICATE,
        ),
        # The queue order: VIPs first, then registration order.
        Index(
            "ix_subscriptions_queue",
            "sku",
            "priority_rank",
            "created_at",
            "id",
            postgresql_where=IN_QUEUE_PREDICATE,
            sqlite_where=IN_QUEUE_PREDICATE,
        ),
        Index("ix_subscriptions_contact_index", "contact_index"),
        # Most shoppers have neither: their rows stay out of these two.
        partial_index(
            "ix_subscriptions_customer_id", "customer_id", where="customer_id IS NOT NULL"
        ),
        partial_index("ix_subscriptions_segment", "segment", where="segment IS NOT NULL"),
        # Retention: notified shoppers who may expire, stopped ones whose contact is kept.
        partial_index("ix_subscriptions_expiry", "last_notified_at", where=EXPIRY_CANDIDATE),
        # Unconfirmed requests, oldest first: erased once CONFIRM_WINDOW_SECONDS have passed.
        partial_index("ix_subscriptions_unconfirmed", "created_at", where=UNCONFIRMED),
        partial_index("ix_subscriptions_erasure", "stopped_at", where=ERASURE_CANDIDATE),
    )


class QueueCount(Base):
    """How many subscriptions of a SKU and priority rank are in its queue (IN_QUEUE).

    Written only by the database's triggers on ``subscriptions`` (migration 0024), at every
    entry to and exit from the queue, whichever statement makes it: a new subscription's
    place is then the sum at its rank or better (it is the newest of its rank), read in
    its INSERT's RETURNING instead of counting the queue ahead of it, a scan that grew with
    the queue. A restock's ``waiting`` -> ``notified`` keeps its shopper in the queue and
    touches no count. A SKU's rank may have several rows (slots), summed: on PostgreSQL a
    change goes to the first one no other transaction holds, or to a new one, so that no
    transaction ever waits for a count (and none can deadlock on them); SQLite, one writer
    at a time, keeps everything in slot 0.
    """

    __tablename__ = "queue_counts"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    priority_rank: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    waiting: Mapped[int] = mapped_column(Integer)


class SubscriptionFallback(Base):
    """A further contact to try when the primary one fails permanently."""

    __tablename__ = "subscription_fallbacks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    rank: Mapped[int] = mapped_column(SmallInteger)
    channel: Mapped[str] = mapped_column(String(16))
    contact_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    contact_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    contact_index: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=FallbackStatus.ACTIVE.value)

    subscription: Mapped[Subscription] = relationship(back_populates="fallbacks")

    __table_args__ = (Index("ix_subscription_fallbacks_contact_index", "contact_index"),)
