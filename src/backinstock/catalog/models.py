from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
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
