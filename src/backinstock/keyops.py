"""Re-sealing stored contacts under the newest keys (``backinstock keys rotate-data``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import identity
from backinstock.contacts import Channel
from backinstock.crypto import Keys, Sealed
from backinstock.identity import NormalizedContact, contact_aad, profile_aad
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.models import Subscription, SubscriptionFallback

_BATCH = 500


async def count_sealed_rows(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        subs = await session.scalar(select(func.count()).select_from(Subscription))
        fallbacks = await session.scalar(select(func.count()).select_from(SubscriptionFallback))
    return int(subs or 0) + int(fallbacks or 0)


async def rotate_data(
    sessions: async_sessionmaker[AsyncSession], keys: Keys, advance: Callable[[int], None]
) -> int:
    """Re-encrypt every contact and profile under the newest encryption key and recompute
    every blind index under the newest index key, in committed batches (safe to re-run)."""
    done = 0
    for model in (Subscription, SubscriptionFallback):
        after: uuid.UUID | None = None
        while True:
            async with sessions() as session, session.begin():
                rows = await _batch(session, model, after)
                for row in rows:
                    await lifecycle.reseal(session, row, _resealed(keys, row))
            if not rows:
                break
            after = rows[-1].id
            done += len(rows)
            advance(len(rows))
    return done


async def _batch(session: AsyncSession, model: Any, after: uuid.UUID | None) -> list[Any]:
    stmt = select(model).order_by(model.id).limit(_BATCH)
    if after is not None:
        stmt = stmt.where(model.id > after)
    return list(await session.scalars(stmt))


def _resealed(keys: Keys, row: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if row.contact_blob is not None:
        aad = contact_aad(row.id)
        plain = keys.cipher.open(Sealed(row.contact_key_id, row.contact_blob), aad)
        sealed = keys.cipher.seal(plain, aad)
        index = identity.index(keys, NormalizedContact(Channel(row.channel), plain))
        values.update(contact_key_id=sealed.key_id, contact_blob=sealed.blob, contact_index=index)
    if getattr(row, "profile_blob", None) is not None:
        aad = profile_aad(row.id)
        plain = keys.cipher.open(Sealed(row.profile_key_id, row.profile_blob), aad)
        sealed = keys.cipher.seal(plain, aad)
        values.update(profile_key_id=sealed.key_id, profile_blob=sealed.blob)
    return values
