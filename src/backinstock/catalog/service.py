"""Products: the names and links shoppers see, and the rule for which links we will send.

A product has a default name (``products.name``) and a name per locale
(``product_names``). A subscription's ``product.name`` is in the subscription's locale; a
stock event may carry names by locale (``product.names``) and a ``product.name`` without
one, which becomes the default. The first name ever known for a SKU is its default until a
stock event says otherwise. A message uses the name in its shopper's locale, else one in
the same language, else the default (:func:`name_for`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import String, func, literal, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.models import Product, ProductName
from backinstock.config import CoreSettings
from backinstock.db import DriverStatement, bound_among, dialect_name, insert_for, utcnow
from backinstock.errors import InvalidField


@dataclass(frozen=True)
class ProductInfo:
    name: str | None = None
    url: str | None = None
    image_url: str | None = None
    # The locale ``name`` is in; None: the SKU's default name (a stock event's).
    locale: str | None = None
    # Further names, by locale (a stock event's ``product.names``).
    names: tuple[tuple[str, str], ...] = ()

    def is_empty(self) -> bool:
        return self.name is None and self.url is None and self.image_url is None and not self.names

    def localized(self) -> list[tuple[str, str]]:
        """(canonical locale, name) pairs this information gives."""
        pairs = [(canonical_locale(locale), name) for locale, name in self.names]
        if self.name is not None and self.locale is not None:
            pairs.insert(0, (canonical_locale(self.locale), self.name))
        return list(dict(pairs).items())


def canonical_locale(locale: str) -> str:
    """BCP 47 case conventions: ``zh_cn`` → ``zh-CN``, ``zh-hans-cn`` → ``zh-Hans-CN``."""
    parts = locale.replace("_", "-").split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            out.append(part.upper())
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())
        else:
            out.append(part.lower())
    return "-".join(out)


def language_of(locale: str) -> str:
    return canonical_locale(locale).split("-")[0]


def name_for(locale: str, names: Sequence[tuple[str, str]], default: str | None) -> str | None:
    """The product's name for a shopper of ``locale``: the name in that locale, else the
    first known in the same language (``zh-TW`` takes ``zh-CN``'s), else the default.
    ``names`` are (canonical locale, name) pairs, oldest first."""
    wanted = canonical_locale(locale)
    exact = next((name for loc, name in names if loc == wanted), None)
    if exact is not None:
        return exact
    language = wanted.split("-")[0]
    same = next((name for loc, name in names if loc.split("-")[0] == language), None)
    return same if same is not None else default


@functools.cache
def _names_statement(dialect: str) -> DriverStatement:
    """Built once: a claim reads its SKUs' names each time (as an ORM select built per
    call, 0.2 ms a claim before it ran)."""
    names = ProductName.metadata.tables[ProductName.__tablename__]
    return DriverStatement(
        select(names.c.sku, names.c.locale, names.c.name)
        .where(bound_among(dialect, names.c.sku, "b_skus"))
        .order_by(names.c.sku, names.c.created_at, names.c.locale)
    )


async def names_of(session: AsyncSession, skus: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """Each SKU's names by locale, oldest first."""
    found: dict[str, list[tuple[str, str]]] = {}
    if not skus:
        return found
    statement = _names_statement(dialect_name(session))
    for sku, locale, name in await statement.all(session, {"b_skus": sorted(set(skus))}):
        found.setdefault(sku, []).append((locale, name))
    return found


async def product_name(session: AsyncSession, sku: str, locale: str) -> str | None:
    """The name a shopper of ``locale`` sees for ``sku`` (None when none is known)."""
    default = await session.scalar(select(Product.name).where(Product.sku == sku))
    return name_for(locale, (await names_of(session, [sku])).get(sku, []), default)


def check_link(settings: CoreSettings, field: str, url: str) -> None:
    """Only links to the shop's own hosts go into messages: no open redirects via /r/."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    allowed = [h.lower() for h in settings.allowed_link_hosts]
    if not host or parts.scheme not in ("http", "https"):
        raise InvalidField(field, "must be an absolute http(s) URL")
    if not allowed:
        if not settings.is_sqlite:
            raise InvalidField(field, "no link hosts are allowed: set ALLOWED_LINK_HOSTS")
        if parts.scheme != "https":
            raise InvalidField(field, "must be an https URL")
        return
    if not any(_host_matches(host, entry) for entry in allowed):
        raise InvalidField(field, "host is not in ALLOWED_LINK_HOSTS")
    if parts.scheme != "https" and host not in allowed:
        raise InvalidField(field, "must be an https URL")


def _host_matches(host: str, entry: str) -> bool:
    if entry.startswith("*."):
        entry = entry[1:]
    if entry.startswith("."):
        return host.endswith(entry) or host == entry[1:]
    return host == entry


def check_product(settings: CoreSettings, info: ProductInfo, prefix: str = "product") -> None:
    if info.url is not None:
        check_link(settings, f"{prefix}.url", info.url)
    if info.image_url is not None:
        parts = urlsplit(info.image_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidField(f"{prefix}.image_url", "must be an absolute http(s) URL")


async def ensure_products(session: AsyncSession, skus: Sequence[str], now: datetime) -> None:
    """A product row for each SKU not known yet (nothing about it but its SKU), in one
    INSERT; known ones are left as they are."""
    if not skus:
        return
    table = insert_for(session, Product.__table__)
    if dialect_name(session) == "postgresql":  # one array, one row of SQL per request
        given = select(func.unnest(literal(list(skus), postgresql.ARRAY(String))), literal(now))
        stmt = table.from_select(["sku", "updated_at"], given)
        await session.execute(stmt.on_conflict_do_nothing(index_elements=[Product.sku]))
        return
    await session.execute(  # compiled once, sent with many rows
        table.on_conflict_do_nothing(index_elements=[Product.sku]),
        [{"sku": sku, "updated_at": now} for sku in skus],
    )


async def upsert_product(
    session: AsyncSession, sku: str, info: ProductInfo, *, overwrite: bool = True
) -> None:
    """Create the product row if missing and record what ``info`` gives. Given fields
    overwrite, missing ones are kept; with ``overwrite=False`` (what a browser sent, through
    a publishable key) given fields only fill what is not known yet. A name without a locale
    is the default name; a localized one becomes the default only if the SKU had none."""
    now = utcnow()
    default = info.name if info.locale is None else None
    localized = info.localized()
    first = info.name if info.name is not None else (localized[0][1] if localized else None)
    values = {"name": first, "url": info.url, "image_url": info.image_url}
    stmt = insert_for(session, Product).values(sku=sku, updated_at=now, **values)
    changes = {
        column: stmt.excluded[column]
        if overwrite and (column != "name" or default is not None)
        else func.coalesce(getattr(Product, column), stmt.excluded[column])
        for column, value in values.items()
        if value is not None
    }
    if changes:
        stmt = stmt.on_conflict_do_update(
            index_elements=[Product.sku], set_={**changes, "updated_at": now}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Product.sku])
    await session.execute(stmt)
    for locale, name in localized:
        named = insert_for(session, ProductName).values(
            sku=sku, locale=locale, name=name, created_at=now, updated_at=now
        )
        keys = [ProductName.sku, ProductName.locale]
        if overwrite:
            named = named.on_conflict_do_update(
                index_elements=keys, set_={"name": name, "updated_at": now}
            )
        else:
            named = named.on_conflict_do_nothing(index_elements=keys)
        await session.execute(named)


class ProductCache:
    """Remembers product info this process wrote recently, so the thousands of subscribes
    that carry the same name and link for a SKU do not each rewrite (and lock) its row.
    A changed name or link is written at once; an unchanged one again after ``ttl``.
    Entries are per SKU and locale (shoppers of each locale send their own name)."""

    def __init__(self, ttl: float = 60.0, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._written: dict[tuple[str, str | None, bool], tuple[float, ProductInfo]] = {}

    def known(self, sku: str, info: ProductInfo, *, overwrite: bool = True) -> bool:
        """Whether :meth:`upsert` would write nothing now (empty info, or written lately)."""
        if info.is_empty():
            return True
        seen = self._written.get((sku, info.locale, overwrite))
        return seen is not None and seen[0] > time.monotonic() and seen[1] == info

    async def upsert(
        self, session: AsyncSession, sku: str, info: ProductInfo, *, overwrite: bool = True
    ) -> None:
        key = (sku, info.locale, overwrite)
        now = time.monotonic()
        if self.known(sku, info, overwrite=overwrite):
            return
        await upsert_product(session, sku, info, overwrite=overwrite)
        if len(self._written) >= self._size:
            self._written.clear()
        # Remembered before commit: if the transaction fails, the next writer within the ttl
        # skips a write the database never saw; the product's metadata is a display hint, and
        # restocks and the next change rewrite it.
        self._written[key] = (now + self._ttl, info)
