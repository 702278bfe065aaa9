"""The ``holds`` table, which this package alone writes: a unit kept for each shopper a
wave step tells, for the SKU's hold time from the moment their message is planned.

A hold is ``held`` until one of: an order carrying the shopper's token consumes it, the
SKU sells out (every hold of its wave ends), or it expires and the sweeper releases it
(its wave's next step is then due at once: ``flows/restock.py``). Units under a hold that
is ``held`` and not yet expired are not free for the next shoppers.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.db import insert_for, one_of
from backinstock.dispatch.models import Notification
from backinstock.restocks.models import HoldState, StockHold


@dataclass(frozen=True)
class HoldView:
    sku: str
    until: datetime
    state: HoldState


async def record(session: AsyncSession, notification_ids: Sequence[uuid.UUID]) -> int:
    """One hold per restock message just planned with a reserved time: one INSERT … SELECT
    of the messages' rows (their wave, SKU and ``held_until``, the time the message states),
    like the messages themselves."""
    if not notification_ids:
        return 0
    rows = select(
        Notification.id,
        Notification.wave_id,
        Notification.sku,
        Notification.held_until,
        literal(HoldState.HELD.value),
    ).where(
        Notification.id.in_(notification_ids),
        Notification.wave_id.is_not(None),
        Notification.held_until.is_not(None),
    )
    columns = [
        StockHold.notification_id,
        StockHold.wave_id,
        StockHold.sku,
        StockHold.until,
        StockHold.state,
    ]
    stmt = (
        insert_for(session, StockHold)
        .from_select(columns, rows, include_defaults=False)
        .on_conflict_do_nothing(index_elements=[StockHold.notification_id])
    )
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


async def held(session: AsyncSession, sku: str, now: datetime) -> int:
    """Units of the SKU under a hold that is neither expired, consumed nor ended."""
    return (await held_by_sku(session, [sku], now))[sku]


async def held_by_sku(session: AsyncSession, skus: Sequence[str], now: datetime) -> dict[str, int]:
    """Units of each of ``skus`` under a hold that is neither expired, consumed nor ended,
    in one query (0 for a SKU holding nothing)."""
    rows = await session.execute(
        select(StockHold.sku, func.count())
        .where(one_of(session, StockHold.sku, skus), StockHold.state == HoldState.HELD)
        .where(StockHold.until > now)
        .group_by(StockHold.sku)
    )
    counts = dict.fromkeys(skus, 0)
    counts.update({sku: int(n) for sku, n in rows})
    return counts


async def of_message(session: AsyncSession, notification_id: uuid.UUID) -> HoldView | None:
    row = (
        await session.execute(
            select(StockHold.sku, StockHold.until, StockHold.state).where(
                StockHold.notification_id == notification_id
            )
        )
    ).first()
    return None if row is None else HoldView(row.sku, row.until, HoldState(row.state))


async def consume(session: AsyncSession, notification_id: uuid.UUID, skus: Collection[str]) -> bool:
    """An order of one of ``skus`` carried the shopper's token: their unit is sold. A hold
    not yet released counts, even a moment past its time (the unit went to its shopper)."""
    consumed = await session.scalar(
        update(StockHold)
        .where(
            StockHold.notification_id == notification_id,
            StockHold.sku.in_(list(skus)),
            StockHold.state == HoldState.HELD,
        )
        .values(state=HoldState.CONSUMED.value)
        .returning(StockHold.notification_id)
    )
    return consumed is not None


async def end(session: AsyncSession, wave_ids: Sequence[uuid.UUID]) -> None:
    """The SKUs sold out: every hold of their waves ends (no unit is left to hold)."""
    await session.execute(
        update(StockHold)
        .where(one_of(session, StockHold.wave_id, wave_ids), StockHold.state == HoldState.HELD)
        .values(state=HoldState.ENDED.value)
    )


async def release_expired(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Holds whose time is over are released; returns their waves, each once."""
    waves = await session.scalars(
        update(StockHold)
        .where(StockHold.state == HoldState.HELD, StockHold.until <= now)
        .values(state=HoldState.RELEASED.value)
        .returning(StockHold.wave_id)
    )
    return sorted(set(waves))
