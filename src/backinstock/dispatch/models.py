from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, new_id, utcnow


class Notification(Base):
    """One message to one shopper for one wave: the unit of work (the outbox row).

    The unique (subscription, wave) key makes a second message per wave impossible.
    Status: pending -> sending (claimed under a lease) -> sent | failed | cancelled.
    """

    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="CASCADE")
    )
    wave_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("waves.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer)  # stock level when planned, for scarcity copy
    queue_size: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Which of the shopper's contacts to use: 0 the primary, n the fallback of rank n.
    contact_rank: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    provider_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    # What the provider later reported: delivered | undelivered | failed (None: no report).
    delivery_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)

    __table_args__ = (
        UniqueConstraint("subscription_id", "wave_id"),
        Index("ix_notifications_work", "status", "next_attempt_at"),
        Index("ix_notifications_wave", "wave_id"),
    )


class DevOutboxMessage(Base):
    """A rendered message for a channel with no provider configured: stored, never sent."""

    __tablename__ = "dev_outbox"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="CASCADE"), unique=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    recipient_masked: Mapped[str] = mapped_column(String(80))
    recipient_key_id: Mapped[str] = mapped_column(String(32))
    recipient_blob: Mapped[bytes] = mapped_column(LargeBinary)
    subject: Mapped[str | None] = mapped_column(String(300), nullable=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
