from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, new_id, partial_index, utcnow


class Redemption(enum.StrEnum):
    """What an order's coupon code turned out to be."""

    REDEEMED = "redeemed"  # ours, issued, and redeemed by this order
    ALREADY_REDEEMED = "already_redeemed"
    NOT_ISSUED = "not_issued"  # in a pool, never handed to a shopper
    UNKNOWN = "unknown"


class CouponPool(Base):
    """Codes uploaded by an operator (from the shop's promotion system), handed out in upload
    order. A pool may be meant for one SKU; pools without a SKU serve every SKU."""

    __tablename__ = "coupon_pools"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    sku: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    # Shown in the follow-up message next to the code, e.g. "10% off".
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Coupon(Base):
    """One code. Uploaded codes wait with ``issued_at`` NULL; generated ones are created when
    issued (``pool_id`` NULL). ``subscription_id`` is unique: one coupon per subscription, ever,
    and ``code`` is unique: a code is never handed out twice."""

    __tablename__ = "coupons"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    pool_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("coupon_pools.id", ondelete="CASCADE"), nullable=True
    )
    # An erased subscription leaves its coupon issued (and so never handed out again).
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="SET NULL"), nullable=True, unique=True
    )
    # The follow-up message that carries the code.
    notification_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="SET NULL"), nullable=True
    )
    sku: Mapped[str | None] = mapped_column(String(128), nullable=True)
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    order_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("orders.id", ondelete="SET NULL"), nullable=True
    )

    __table_args__ = (
        # The next free code of a pool, in upload order, without scanning issued ones.
        partial_index("ix_coupons_available", "pool_id", "id", where="issued_at IS NULL"),
        Index("ix_coupons_issued_at", "issued_at"),
        Index("ix_coupons_redeemed_at", "redeemed_at"),
    )
