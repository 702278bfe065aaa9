"""Products: the names and links shoppers see, and the rule for which links we will send."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.models import Product
from backinstock.config import CoreSettings
from backinstock.db import insert_for, utcnow
from backinstock.errors import InvalidField


@dataclass(frozen=True)
class ProductInfo:
    name: str | None = None
    url: str | None = None
    image_url: str | None = None

    def is_empty(self) -> bool:
        return self.name is None and self.url is None and self.image_url is None


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


async def upsert_product(session: AsyncSession, sku: str, info: ProductInfo) -> None:
    """Create the product row if missing; given fields overwrite, missing ones are kept."""
    values = {"name": info.name, "url": info.url, "image_url": info.image_url}
    given = {k: v for k, v in values.items() if v is not None}
    stmt = insert_for(session, Product).values(sku=sku, updated_at=utcnow(), **values)
    if given:
        stmt = stmt.on_conflict_do_update(
            index_elements=[Product.sku], set_={**given, "updated_at": utcnow()}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[Product.sku])
    await session.execute(stmt)


class ProductCache:
    """Remembers product info this process wrote recently, so the thousands of subscribes
    that carry the same name and link for a SKU do not each rewrite (and lock) its row.
    A changed name or link is written at once; an unchanged one again after ``ttl``."""

    def __init__(self, ttl: float = 60.0, size: int = 10_000) -> None:
        self._ttl = ttl
        self._size = size
        self._written: dict[str, tuple[float, ProductInfo]] = {}

    async def upsert(self, session: AsyncSession, sku: str, info: ProductInfo) -> None:
        seen = self._written.get(sku)
        now = time.monotonic()
        if seen is not None and seen[0] > now and seen[1] == info:
            return
        await upsert_product(session, sku, info)
        if len(self._written) >= self._size:
            self._written.clear()
        # Remembered before commit: if the transaction fails, the next writer within the ttl
        # skips a write the database never saw; the product's metadata is a display hint, and
        # restocks and the next change rewrite it.
        self._written[sku] = (now + self._ttl, info)
