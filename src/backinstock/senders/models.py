"""The dev outbox's table: rendered messages for channels without a provider, stored, never
sent. Owned by :mod:`backinstock.senders.outbox`, which seals as it writes and opens them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, new_id, utcnow


class DevOutboxMessage(Base):
    """A rendered message for a channel with no provider configured: stored, never sent.

    The recipient and the content (subject and body: the shopper's name, live click and
    unsubscribe tokens) are sealed like contacts; ``senders.outbox`` seals and opens them."""

    __tablename__ = "dev_outbox"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="CASCADE"), unique=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    recipient_masked: Mapped[str] = mapped_column(String(80))
    recipient_key_id: Mapped[str] = mapped_column(String(32))
    recipient_blob: Mapped[bytes] = mapped_column(LargeBinary)
    content_key_id: Mapped[str] = mapped_column(String(32))
    content_blob: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
