"""The ``waves`` table, which this package alone writes: a wave opens with a restock,
advances a step at a time under a lease, and closes when the SKU sells out.

How a step becomes messages is the restock flow (``flows/restock.py``); here is what a wave
row says about it. Every decision is re-derived from the row, so a step interrupted by a
crash is resumed by whichever worker takes the lease next.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Row, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backinstock.catalog.policy import Policy
from backinstock.config import Settings
from backinstock.db import insert_for, new_id, one_of
from backinstock.restocks.models import Wave, WaveStatus

WaveRow = Row[str, int, int, int, int]  # sku, step, level, planned, target


# A wave's target is a 32-bit column; no queue is that long, so the cap changes no step.
MAX_TARGET = 2**31 - 1


def free_units(level: int, held: int) -> int:
    """Units nobody is told about yet: the level less the units held for told shoppers."""
    return max(level - held, 0)


def step_size(policy: Policy, level: int) -> int:
    """How many shoppers a step adds, on ``level`` free units (the stock level less the
    units held for shoppers told before, :func:`free_units`): those units times the SKU's
    multiplier."""
    return math.ceil(level * policy.batch_multiplier) if level > 0 else 0


class Progress(Protocol):
    """What sizing a step reads of a wave: a :class:`Wave`, or a :class:`WaveState`."""

    @property
    def target(self) -> int: ...
    @property
    def planned(self) -> int: ...


@dataclass(frozen=True)
class WaveState:
    """An open wave as a bulk request reads it (plain columns, no ORM object)."""

    id: uuid.UUID
    sku: str
    next_step_at: datetime | None
    target: int
    planned: int


def step_target(policy: Policy, wave: Progress, level: int) -> int:
    """How many shoppers the wave means to have told once its next step, at ``level``, is
    written: what is left of the current step, plus the new step's share."""
    return min(max(wave.target, wave.planned) + step_size(policy, level), MAX_TARGET)


def step_count(policy: Policy, wave: Progress, level: int, eligible: int, held: int = 0) -> int:
    """How many messages the wave's next step writes, of ``eligible`` shoppers not yet told,
    at ``level`` with ``held`` units held: the sizing :func:`begin_step` applies, bounded by
    the queue."""
    return min(eligible, step_target(policy, wave, free_units(level, held)) - wave.planned)


def _lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.waves.claim_lease_seconds)


def _free(now: datetime) -> ColumnElement[bool]:
    return or_(Wave.lease_until.is_(None), Wave.lease_until < now)


def _has_work(now: datetime) -> ColumnElement[bool]:
    return or_(Wave.next_step_at <= now, Wave.planned < Wave.target)


async def open_waves_of(session: AsyncSession, skus: Sequence[str]) -> dict[str, WaveState]:
    """The open wave of each of ``skus`` that has one, locked (in SKU order) until the
    transaction ends, in one query of plain columns (a thousand ORM objects, loaded and
    flushed back, cost a sync more than its SQL)."""
    rows = await session.execute(
        select(Wave.id, Wave.sku, Wave.next_step_at, Wave.target, Wave.planned)
        .where(one_of(session, Wave.sku, skus), Wave.status == WaveStatus.OPEN)
        .order_by(Wave.sku)
        .with_for_update()
    )
    return {row.sku: WaveState(*row) for row in rows}


async def make_due_all(
    session: AsyncSession,
    wave_ids: Sequence[uuid.UUID],
    now: datetime,
    request_id: str | None,
) -> None:
    """The level rose while these waves are open (by ``request_id``'s event): their next
    step is due at once."""
    if wave_ids:
        await session.execute(
            update(Wave)
            .where(one_of(session, Wave.id, wave_ids))
            .values(next_step_at=now, request_id=request_id)
        )


async def open_many(
    session: AsyncSession,
    opening: Sequence[tuple[str, uuid.UUID, int]],
    now: datetime,
    request_id: str | None,
) -> list[WaveState]:
    """A wave for each (sku, restock_id, level) back from nothing, opened by ``request_id``,
    its first step due at once: one statement, compiled once, sent with every row."""
    if not opening:
        return []
    made = [WaveState(new_id(), sku, now, 0, 0) for sku, _, _ in opening]
    await session.execute(
        insert_for(session, Wave.__table__),  # the Core table: no mapper walk per row
        [
            {
                "id": wave.id,
                "sku": wave.sku,
                "status": WaveStatus.OPEN.value,
                "opened_at": now,
                "restock_id": restock_id,
                "step": 0,
                "target": 0,
                "planned": 0,
                "level": level,
                "next_step_at": now,
                "request_id": request_id,
            }
            for wave, (_, restock_id, level) in zip(made, opening, strict=True)
        ],
    )
    return made


async def make_due_now(
    session: AsyncSession, wave_ids: Sequence[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """Holds of these waves expired: the open ones' next step is due at once, to tell the
    next shoppers about the released units. Returns the open waves."""
    if not wave_ids:
        return []
    made_due = await session.scalars(
        update(Wave)
        .where(one_of(session, Wave.id, wave_ids), Wave.status == WaveStatus.OPEN)
        .values(next_step_at=now)
        .returning(Wave.id)
    )
    return list(made_due)


async def close(
    session: AsyncSession, wave_ids: Sequence[uuid.UUID], now: datetime
) -> dict[uuid.UUID, str]:
    """Sold out: no further steps. Returns the SKU of each wave this call closed (not of one
    closed already), so that what follows a close happens once."""
    closed = await session.execute(
        update(Wave)
        .where(Wave.id.in_(list(wave_ids)), Wave.status == WaveStatus.OPEN)
        .values(status=WaveStatus.CLOSED.value, closed_at=now, next_step_at=None, lease_until=None)
        .returning(Wave.id, Wave.sku)
    )
    return {wave_id: str(sku) for wave_id, sku in closed}


async def take_lease(
    session: AsyncSession, settings: Settings, wave_id: uuid.UUID, now: datetime
) -> Wave | None:
    """Take the wave's lease if it has work: a due step, or a step not fully written."""
    claimed = await session.scalar(
        update(Wave)
        .where(Wave.id == wave_id, Wave.status == WaveStatus.OPEN, _free(now), _has_work(now))
        .values(lease_until=now + _lease(settings))
        .returning(Wave.id)
    )
    if claimed is None:
        return None
    return await session.get(Wave, wave_id, populate_existing=True)


def step_due(wave: Wave, now: datetime) -> bool:
    return wave.next_step_at is not None and wave.next_step_at <= now


def begin_step(policy: Policy, wave: Wave, level: int, now: datetime, held: int = 0) -> None:
    """Size the next step on the level of now, less the units ``held`` for shoppers told
    before, and the SKU's rules of now; the one after is due the SKU's interval later."""
    wave.step += 1
    wave.level = level
    wave.target = step_target(policy, wave, free_units(level, held))
    wave.next_step_at = now + timedelta(seconds=policy.batch_interval_seconds)


async def release(session: AsyncSession, wave_id: uuid.UUID) -> None:
    await session.execute(update(Wave).where(Wave.id == wave_id).values(lease_until=None))


async def lock_for_chunk(
    session: AsyncSession, settings: Settings, wave_id: uuid.UUID, now: datetime
) -> WaveRow | None:
    """Renew the lease and lock the row for one chunk of the step: a sell-out closing the
    wave waits for the chunk, then cancels it. None once the wave is closed."""
    row = await session.execute(
        update(Wave)
        .where(Wave.id == wave_id, Wave.status == WaveStatus.OPEN)
        .values(lease_until=now + _lease(settings))
        .returning(Wave.sku, Wave.step, Wave.level, Wave.planned, Wave.target)
    )
    return row.one_or_none()


async def count_planned(session: AsyncSession, wave_id: uuid.UUID, written: int) -> None:
    await session.execute(
        update(Wave).where(Wave.id == wave_id).values(planned=Wave.planned + written)
    )


async def end_step(session: AsyncSession, wave_id: uuid.UUID) -> None:
    """The queue ran out before the step's target: the step is complete as written."""
    await session.execute(update(Wave).where(Wave.id == wave_id).values(target=Wave.planned))


async def due(session: AsyncSession, now: datetime, limit: int = 1000) -> list[uuid.UUID]:
    """Open waves with work and no live lease: a step due, or a step not fully written."""
    query = (
        select(Wave.id)
        .where(Wave.status == WaveStatus.OPEN, _free(now), _has_work(now))
        .limit(limit)
    )
    return list(await session.scalars(query))
