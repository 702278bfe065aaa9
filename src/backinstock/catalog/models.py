from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import UniqueConstraint

from backinstock.db import Base, UTCDateTime, utcnow


class Product(Base):
    """What shoppers wait for; names and links come from the storefront and the ERP.

    ``name`` is the SKU's default name: the first name known for it, or the one a stock
    event sent without a locale. Names per locale are :class:`ProductName` rows."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(300), nullable=True)
    url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    image_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ProductSubstitute(Base):
    """One of the alternatives named to shoppers while ``sku`` is sold out, in the order
    listed (``position`` from 0). The substitute need not be a known product yet; whether it
    is shown depends on its stock level when it would be (``restocks/substitutes.py``).
    The primary key is the look-up: a SKU's list, in order."""

    __tablename__ = "product_substitutes"

    sku: Mapped[str] = mapped_column(
        String(128), ForeignKey("products.sku", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(primary_key=True)
    substitute_sku: Mapped[str] = mapped_column(String(128))

    __table_args__ = (UniqueConstraint("sku", "substitute_sku"),)


class ProductName(Base):
    """A product's name in one locale (canonical form, e.g. ``zh-CN``, ``en``, ``en-GB``):
    a message is written with the name in its shopper's locale."""

    __tablename__ = "product_names"

    sku: Mapped[str] = mapped_column(
        String(128), ForeignKey("products.sku", ondelete="CASCADE"), primary_key=True
    )
    locale: Mapped[str] = mapped_column(String(35), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ProductPolicy(Base):
    """A SKU's own rules: each column overrides the setting of its name, NULL keeps the
    setting. Typed columns rather than a document, so set-based statements join them (the
    follow-ups' due messages compare each one's delay in SQL)."""

    __tablename__ = "product_policies"

    sku: Mapped[str] = mapped_column(
        String(128), ForeignKey("products.sku", ondelete="CASCADE"), primary_key=True
    )
    batch_multiplier: Mapped[float | None] = mapped_column(Float, nullable=True)
    batch_interval_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    hold_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    followup_after_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # SOLDOUT_COMPENSATION for this SKU (off, message, coupon).
    soldout_compensation: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # SUBSTITUTE_AFTER_SECONDS for this SKU (0: no substitute message for it).
    substitute_after_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The channels a subscription may use, comma-separated ("sms,email"); NULL: every one.
    channels: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
