"""Stock levels from inventory events, and the wave transitions they cause.

A SKU's level is the sum over its locations of each location's latest event by
``occurred_at``. Going from 0 to more opens a wave whose first step is due at once; a rise
while a wave is open makes the next step due at once; 0 closes the wave.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog import service as catalog
from backinstock.catalog.models import Product
from backinstock.config import Settings
from backinstock.db import insert_for, new_id, utcnow
from backinstock.errors import InvalidField
from backinstock.fields import refuse_future
from backinstock.restocks import waves
from backinstock.restocks.models import RestockEvent, StockLevel, Wave
from backinstock.restocks.schemas import MAX_LEVEL, RestockIn, RestockOut
from backinstock.restocks.waves import current_level, queue_length


@dataclass(frozen=True)
class RestockOutcome:
    result: RestockOut
    replay: bool
    wave_due: uuid.UUID | None  # a wave whose step the caller should wake a worker for


async def record(session: AsyncSession, settings: Settings, payload: RestockIn) -> RestockOutcome:
    refuse_future("occurred_at", payload.occurred_at, settings.core.max_clock_skew_seconds)
    product = catalog.ProductInfo(**(payload.product.model_dump() if payload.product else {}))
    catalog.check_product(settings.core, product)
    occurred_at = payload.occurred_at or utcnow()
    event_id = new_id()
    inserted = await session.scalar(
        insert_for(session, RestockEvent)
        .values(
            id=event_id,
            location=payload.location,
            event_id=payload.event_id,
            sku=payload.sku,
            available=payload.available,
            occurred_at=occurred_at,
            received_at=utcnow(),
            applied=False,
            level_after=0,
            waiting=0,
            first_wave=0,
        )
        .on_conflict_do_nothing(index_elements=[RestockEvent.location, RestockEvent.event_id])
        .returning(RestockEvent.id)
    )
    if inserted is None:
        return RestockOutcome(await _replayed(session, payload), replay=True, wave_due=None)

    await _lock_sku(session, payload.sku, product)
    before = await current_level(session, payload.sku)
    applied = await _apply_level(session, payload, occurred_at, event_id)
    after = await current_level(session, payload.sku) if applied else before
    if after > MAX_LEVEL:  # rolled back with the request: nothing of this event is kept
        raise InvalidField("available", f"the SKU's level would exceed {MAX_LEVEL}")
    wave_due, step_size = await _transition(session, settings, payload.sku, before, after, event_id)
    waiting = await queue_length(session, payload.sku)
    event = await session.get(RestockEvent, event_id)
    assert event is not None
    event.applied, event.level_after, event.waiting, event.first_wave = (
        applied,
        after,
        waiting,
        step_size,
    )
    result = RestockOut(
        restock_id=event_id,
        sku=payload.sku,
        available=after,
        waiting=waiting,
        first_wave=step_size,
        applied=applied,
    )
    return RestockOutcome(result, replay=False, wave_due=wave_due)


async def _replayed(session: AsyncSession, payload: RestockIn) -> RestockOut:
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


def step_size(settings: Settings, level: int) -> int:
    return math.ceil(level * settings.waves.batch_multiplier) if level > 0 else 0


async def _transition(
    session: AsyncSession,
    settings: Settings,
    sku: str,
    before: int,
    after: int,
    event_id: uuid.UUID,
) -> tuple[uuid.UUID | None, int]:
    """Open, advance or close the SKU's wave; returns the wave now due and its step size."""
    wave = await session.scalar(
        select(Wave).where(Wave.sku == sku, Wave.status == "open").with_for_update()
    )
    now = utcnow()
    if wave is not None and after == 0:
        await waves.close(session, wave.id, now)
        return None, 0
    if wave is not None and after > before:
        wave.next_step_at = now
        return wave.id, await _next_step_count(session, settings, wave, after)
    if wave is None and before == 0 and after > 0:
        wave = Wave(id=new_id(), sku=sku, restock_id=event_id, next_step_at=now, level=after)
        session.add(wave)
        await session.flush()
        return wave.id, await _next_step_count(session, settings, wave, after)
    return None, 0


async def _next_step_count(
    session: AsyncSession, settings: Settings, wave: Wave, level: int
) -> int:
    eligible = await waves.eligible_count(session, settings, wave.sku, wave.id)
    return min(eligible, step_size(settings, level) + max(wave.target - wave.planned, 0))
