"""A product's substitutes: up to :data:`MAX_SUBSTITUTES` other SKUs, in order, that
shoppers are shown while the product is sold out (``product_substitutes``, which this
package alone writes). Which of them are in stock is a question for the stock levels
(``restocks/substitutes.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.models import Product, ProductSubstitute
from backinstock.catalog.service import ProductInfo, upsert_product

MAX_SUBSTITUTES = 10


async def replace(session: AsyncSession, sku: str, substitutes: Sequence[str]) -> None:
    """Make ``substitutes`` the SKU's whole list, in that order (empty: none). The product
    row is made if the SKU is not known yet, and locked, so that two replacements of one
    list run one after the other instead of mixing."""
    await upsert_product(session, sku, ProductInfo())
    await session.execute(select(Product.sku).where(Product.sku == sku).with_for_update())
    await session.execute(delete(ProductSubstitute).where(ProductSubstitute.sku == sku))
    if substitutes:
        await session.execute(
            insert(ProductSubstitute),
            [
                {"sku": sku, "position": position, "substitute_sku": substitute}
                for position, substitute in enumerate(substitutes)
            ],
        )


async def listed(session: AsyncSession, sku: str) -> list[str]:
    """The SKU's substitutes, in order."""
    rows = await session.scalars(
        select(ProductSubstitute.substitute_sku)
        .where(ProductSubstitute.sku == sku)
        .order_by(ProductSubstitute.position)
    )
    return list(rows)
