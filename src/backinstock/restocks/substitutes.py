"""Which of a product's substitutes shoppers are shown: while the product is sold out
(its level, the sum over its locations, is 0), those of its listed substitutes whose own
level is above 0 now, in the order listed, each named in the shopper's locale
(``catalog.service.name_for``).

The list is catalog's (``product_substitutes``); the levels are this package's. Each
question is one statement over primary keys: the list by (sku, position), each level by
``stock_levels``' (sku, location), names by ``product_names``' (sku, locale). The
subscribe path asks it for every subscription, so it is textual and built once; the
product's own level there does not depend on the row, so PostgreSQL evaluates it first,
once, and reads no list for a product in stock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.models import ProductSubstitute
from backinstock.catalog.service import name_for
from backinstock.restocks.models import StockLevel


@dataclass(frozen=True)
class Substitute:
    """A substitute in stock, as a shopper sees it."""

    sku: str
    name: str | None  # None when no name is known for it
    url: str | None


_LEVEL_OF = "(SELECT coalesce(sum(l.available), 0) FROM stock_levels AS l WHERE l.sku = {})"
_SHOWN = (
    "SELECT s.sku, s.substitute_sku, p.name, p.url, n.locale, n.name AS localized "
    "FROM product_substitutes AS s "
    "LEFT JOIN products AS p ON p.sku = s.substitute_sku "
    "LEFT JOIN product_names AS n ON n.sku = s.substitute_sku "
    "WHERE {where} AND {product_level} <= 0 AND "
    + _LEVEL_OF.format("s.substitute_sku")
    + " > 0 ORDER BY s.sku, s.position, n.created_at, n.locale"
)
# One product (subscribe): its level is a constant of the statement.
SHOWN_FOR_ONE = text(
    _SHOWN.format(where="s.sku = :sku", product_level=_LEVEL_OF.format(":sku"))
).bindparams(bindparam("sku", type_=String()))
# Many products (the shopper's page): each row's product level.
SHOWN_FOR_MANY = text(
    _SHOWN.format(where="s.sku IN :skus", product_level=_LEVEL_OF.format("s.sku"))
).bindparams(bindparam("skus", type_=String(), expanding=True))


async def shown(session: AsyncSession, sku: str, locale: str) -> list[Substitute]:
    """What a shopper of ``locale`` is shown for ``sku``: nothing while it is in stock."""
    rows = await session.execute(SHOWN_FOR_ONE, {"sku": sku})
    return _collect(rows, locale).get(sku, [])


async def shown_for(
    session: AsyncSession, skus: Sequence[str], locale: str
) -> dict[str, list[Substitute]]:
    """:func:`shown` for several products at once (those in stock or without substitutes
    are left out)."""
    if not skus:
        return {}
    rows = await session.execute(SHOWN_FOR_MANY, {"skus": sorted(set(skus))})
    return _collect(rows, locale)


def _collect(rows: Iterable[Sequence[Any]], locale: str) -> dict[str, list[Substitute]]:
    """Rows are one per (substitute, name by locale), in the lists' order and each
    substitute's names oldest first, as ``name_for`` takes them."""
    found: dict[str, dict[str, tuple[str | None, str | None, list[tuple[str, str]]]]] = {}
    for sku, substitute, default, url, name_locale, localized in rows:
        entry = found.setdefault(sku, {}).setdefault(substitute, (default, url, []))
        if name_locale is not None:
            entry[2].append((name_locale, localized))
    return {
        sku: [
            Substitute(substitute, name_for(locale, names, default), url)
            for substitute, (default, url, names) in listed.items()
        ]
        for sku, listed in found.items()
    }


async def listed_in_stock(session: AsyncSession, sku: str) -> list[tuple[str, bool]]:
    """The SKU's whole list, in order, each substitute with whether it is in stock now."""
    level = (
        select(func.coalesce(func.sum(StockLevel.available), 0))
        .where(StockLevel.sku == ProductSubstitute.substitute_sku)
        .scalar_subquery()
    )
    rows = await session.execute(
        select(ProductSubstitute.substitute_sku, level)
        .where(ProductSubstitute.sku == sku)
        .order_by(ProductSubstitute.position)
    )
    return [(substitute, int(units) > 0) for substitute, units in rows]


# Products sold out now with at least one listed substitute in stock: those whose waiting
# shoppers may be offered substitutes. Products with a list are few (a list is kept by
# hand), so this reads every list, each level by its primary key.
_SOLD_OUT = (
    "SELECT DISTINCT s.sku FROM product_substitutes AS s "
    "WHERE {product_level} <= 0 AND {substitute_level} > 0 ORDER BY s.sku"
)
_SOLD_OUT_WITH_SUBSTITUTES = text(
    _SOLD_OUT.format(
        product_level=_LEVEL_OF.format("s.sku"),
        substitute_level=_LEVEL_OF.format("s.substitute_sku"),
    )
)


async def sold_out_with_substitutes(session: AsyncSession) -> list[str]:
    """The SKUs whose shoppers are shown substitutes now (:func:`shown` is not empty)."""
    return list(await session.scalars(_SOLD_OUT_WITH_SUBSTITUTES))
