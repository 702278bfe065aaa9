"""Stock levels from inventory events: ``restock_events`` and ``stock_levels``, which this
package alone writes (with ``waves``, in ``waves.py``).

A SKU's level is the sum over its locations of each location's latest event by
``occurred_at``. What a change of level does to the SKU's wave is the restock flow
(``flows/restock.py``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog import service as catalog
from backinstock.catalog.models import Product
from backinstock.db import insert_for, new_id
from backinstock.errors import InvalidField
from backinstock.restocks.models import RestockEvent, StockLevel
from backinstock.restocks.schemas import MAX_LEVEL, RestockIn, RestockOut


@dataclass(frozen=True)
class LevelChange:
    before: int
    after: int
    applied: bool  # False: an event older than the location's latest, recorded and ignored


async def current_level(session: AsyncSession, sku: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(StockLevel.available), 0)).where(StockLevel.sku == sku)
    )
    return int(total or 0)


async def record_event(
    session: AsyncSession, payload: RestockIn, occurred_at: datetime, now: datetime
) -> uuid.UUID | None:
    """Keep the event, received ``now``; None when (location, event_id) was recorded before
    (a replay)."""
    return await session.scalar(  # type: ignore[no-any-return]
        insert_for(session, RestockEvent)
        .values(
            id=new_id(),
            location=payload.location,
            event_id=payload.event_id,
            sku=payload.sku,
            available=payload.available,
            occurred_at=occurred_at,
            received_at=now,
            applied=False,
            level_after=0,
            waiting=0,
            first_wave=0,
        )
        .on_conflict_do_nothing(index_elements=[RestockEvent.location, RestockEvent.event_id])
        .returning(RestockEvent.id)
    )


async def answer_event(session: AsyncSession, event_id: uuid.UUID, answer: RestockOut) -> None:
    """Store the answer with the event, for a replay to return."""
    event = await session.get(RestockEvent, event_id)
    assert event is not None
    event.applied, event.level_after = answer.applied, answer.available
    event.waiting, event.first_wave = answer.waiting, answer.first_wave


async def stored_answer(session: AsyncSession, payload: RestockIn) -> RestockOut:
    event = await session.scalar(
        select(RestockEvent).where(
            RestockEvent.location == payload.location, RestockEvent.event_id == payload.event_id
        )
    )
    assert event is not None
    return RestockOut(
        restock_id=event.id,
        sku=event.sku,
        available=event.level_after,
        waiting=event.waiting,
        first_wave=event.first_wave,
        applied=event.applied,
    )


async def apply_level(
    session: AsyncSession,
    payload: RestockIn,
    product: catalog.ProductInfo,
    occurred_at: datetime,
    event_id: uuid.UUID,
) -> LevelChange:
    """Set the location's level (unless a newer event did) under the SKU's lock."""
    await _lock_sku(session, payload.sku, product)
    before = await current_level(session, payload.sku)
    applied = await _apply_level(session, payload, occurred_at, event_id)
    after = await current_level(session, payload.sku) if applied else before
    if after > MAX_LEVEL:  # rolled back with the request: nothing of this event is kept
        raise InvalidField("available", f"the SKU's level would exceed {MAX_LEVEL}")
    return LevelChange(before, after, applied)


async def _lock_sku(session: AsyncSession, sku: str, product: catalog.ProductInfo) -> None:
    """Serialise stock events of one SKU: they read, then write, its level and wave."""
    await catalog.upsert_product(session, sku, product)
    await session.execute(select(Product.sku).where(Product.sku == sku).with_for_update())


async def _apply_level(
    session: AsyncSession, payload: RestockIn, occurred_at: datetime, event_id: uuid.UUID
) -> bool:
    """Upsert the location's level unless a newer event already set it."""
    key = {"sku": payload.sku, "location": payload.location}
    current = await session.get(StockLevel, (payload.sku, payload.location), with_for_update=True)
    if current is not None and current.occurred_at > occurred_at:
        return False  # late: recorded above, ignored here
    values = {"available": payload.available, "occurred_at": occurred_at, "restock_id": event_id}
    await session.execute(
        insert_for(session, StockLevel)
        .values(**key, **values)
        .on_conflict_do_update(index_elements=[StockLevel.sku, StockLevel.location], set_=values)
    )
    return True
