"""Stock levels from inventory events: ``restock_events`` and ``stock_levels``, which this
package alone writes (with ``waves``, in ``waves.py``).

A SKU's level is the sum over its locations of each location's latest event by
``occurred_at``. What a change of level does to the SKU's wave is the restock flow
(``flows/restock.py``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    Uuid,
    bindparam,
    delete,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert  # the ON CONFLICT of PostgreSQL's
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog import service as catalog
from backinstock.catalog.models import Product
from backinstock.db import (
    UTCDateTime,
    dialect_name,
    in_rows,
    insert_for,
    new_id,
    one_of,
    rows_params,
    rows_table,
)
from backinstock.errors import InvalidField
from backinstock.restocks.models import RestockEvent, StockLevel
from backinstock.restocks.schemas import MAX_LEVEL, RestockIn, RestockOut

# The Core tables (no mapper walk per row) of the bulk statements.
_EVENTS = RestockEvent.metadata.tables[RestockEvent.__tablename__]
_LEVELS = StockLevel.metadata.tables[StockLevel.__tablename__]


@dataclass(frozen=True)
class LevelChange:
    before: int
    after: int
    applied: bool  # False: an event older than the location's latest, recorded and ignored


async def current_level(session: AsyncSession, sku: str) -> int:
    return (await levels_of(session, [sku]))[sku]


async def record_event(
    session: AsyncSession, payload: RestockIn, occurred_at: datetime, now: datetime
) -> uuid.UUID | None:
    """Keep the event, received ``now``; None when (location, event_id) was recorded before
    (a replay)."""
    ids = await record_events(session, [NewEvent(payload, occurred_at)], now)
    return ids.get((payload.location, payload.event_id))


async def answer_event(session: AsyncSession, answer: RestockOut) -> None:
    """Store the answer with its event, for a replay to return."""
    await answer_events(session, [answer])


async def stored_answer(session: AsyncSession, payload: RestockIn) -> RestockOut:
    key = (payload.location, payload.event_id)
    return (await stored_answers(session, [key]))[key]


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


# --------------------------------------------------------------------------- in bulk
EventKey = tuple[str, str]  # (location, event_id): an event's identity
LocationLevel = tuple[int, datetime]  # (available, occurred_at) of a location's latest event


@dataclass(frozen=True)
class NewEvent:
    payload: RestockIn
    occurred_at: datetime


async def record_events(
    session: AsyncSession, events: Sequence[NewEvent], now: datetime
) -> dict[EventKey, uuid.UUID]:
    """Keep the events in one INSERT; returns the ids of those not recorded before (a key
    absent from the answer is a replay, or a repeat within ``events``)."""
    if not events:
        return {}
    dialect = dialect_name(session)
    ids = [new_id() for _ in events]
    if dialect == "postgresql":  # one array per column: no per-row parameters to build
        params = rows_params(
            dialect,
            "events",
            id=ids,
            location=[e.payload.location for e in events],
            event_id=[e.payload.event_id for e in events],
            sku=[e.payload.sku for e in events],
            available=[e.payload.available for e in events],
            occurred_at=[e.occurred_at for e in events],
        )
        inserted = await session.execute(_pg_record_events(), {**params, "received_at": now})
    else:
        # One statement compiled once and sent with many rows (SQLAlchemy batches them into
        # multi-row INSERTs, RETURNING included), through the Core table (no mapper walk).
        inserted = await session.execute(
            _record_events(insert_for(session, _EVENTS)),
            [
                {
                    "id": id_,
                    "location": e.payload.location,
                    "event_id": e.payload.event_id,
                    "sku": e.payload.sku,
                    "available": e.payload.available,
                    "occurred_at": e.occurred_at,
                    "received_at": now,
                    **_UNANSWERED,
                }
                for id_, e in zip(ids, events, strict=True)
            ],
        )
    return {(location, event_id): id_ for location, event_id, id_ in inserted}


_UNANSWERED = {"applied": False, "level_after": 0, "waiting": 0, "first_wave": 0}


def _record_events(stmt: Any) -> Any:
    return stmt.on_conflict_do_nothing(
        index_elements=[RestockEvent.location, RestockEvent.event_id]
    ).returning(RestockEvent.location, RestockEvent.event_id, RestockEvent.id)


@functools.cache
def _pg_record_events() -> Any:
    """Built once: ``INSERT … SELECT`` from the events' arrays, in request order (a repeat
    within the request conflicts with its first occurrence, which is kept)."""
    given = rows_table(
        "postgresql",
        "events",
        id=Uuid,
        location=String,
        event_id=String,
        sku=String,
        available=Integer,
        occurred_at=UTCDateTime,
    )
    unanswered = [literal(value) for value in _UNANSWERED.values()]
    rows = select(*given.c, bindparam("received_at", type_=UTCDateTime), *unanswered)
    columns = [*given.c.keys(), "received_at", *_UNANSWERED]
    return _record_events(insert(_EVENTS).from_select(columns, rows))


async def stored_answers(
    session: AsyncSession, keys: Collection[EventKey]
) -> dict[EventKey, RestockOut]:
    """The answers recorded with earlier events, for their replays, in one SELECT."""
    if not keys:
        return {}
    e = RestockEvent
    rows = await session.execute(select(e).where(tuple_(e.location, e.event_id).in_(list(keys))))
    return {
        (event.location, event.event_id): RestockOut(
            restock_id=event.id,
            sku=event.sku,
            available=event.level_after,
            waiting=event.waiting,
            first_wave=event.first_wave,
            applied=event.applied,
        )
        for event in rows.scalars()
    }


async def lock_skus(session: AsyncSession, skus: Sequence[str], now: datetime) -> None:
    """The product row of each SKU, made if missing, locked in SKU order: the single-event
    path locks one of them the same way, and two bulk requests sharing SKUs take their
    locks in the same order (no deadlock)."""
    ordered = sorted(set(skus))
    await catalog.ensure_products(session, ordered, now)
    await session.execute(
        select(Product.sku)
        .where(one_of(session, Product.sku, ordered))
        .order_by(Product.sku)
        .with_for_update()
    )


async def levels_of(session: AsyncSession, skus: Collection[str]) -> dict[str, int]:
    """Each SKU's level (the sum over its locations), in one grouped query; 0 for a SKU
    with no level yet. The SKUs' product rows are locked (:func:`lock_skus`), so no other
    stock event changes them meanwhile."""
    levels = dict.fromkeys(skus, 0)
    rows = await session.execute(
        select(StockLevel.sku, func.sum(StockLevel.available))
        .where(one_of(session, StockLevel.sku, list(skus)))
        .group_by(StockLevel.sku)
    )
    levels.update({sku: int(total or 0) for sku, total in rows})
    return levels


async def location_levels(
    session: AsyncSession, pairs: Collection[tuple[str, str]]
) -> dict[tuple[str, str], LocationLevel]:
    """The level of each (sku, location) that has one: (sku, location) → (available,
    occurred_at). Only the locations a request names are read: a catalogue synced from 50
    marketplaces has 50 rows per SKU. Not locked: every writer of a SKU's levels holds its
    product row's lock (:func:`lock_skus`, ``_lock_sku``), which the caller took first."""
    columns = (StockLevel.sku, StockLevel.location, StockLevel.available, StockLevel.occurred_at)
    dialect = dialect_name(session)
    if dialect == "postgresql":  # one array per column, not an IN of a thousand pairs
        named = rows_table(dialect, "named", sku=String, location=String)
        query = select(*columns).join(
            named, (named.c.sku == StockLevel.sku) & (named.c.location == StockLevel.location)
        )
        params = rows_params(
            dialect, "named", sku=[s for s, _ in pairs], location=[loc for _, loc in pairs]
        )
    else:
        query = select(*columns).where(tuple_(StockLevel.sku, StockLevel.location).in_(list(pairs)))
        params = {}
    rows = await session.execute(query, params)
    return {(sku, location): (available, at) for sku, location, available, at in rows}


async def write_levels(
    session: AsyncSession, rows: Sequence[tuple[str, str, int, datetime, uuid.UUID]]
) -> None:
    """Set each (sku, location, available, occurred_at, restock_id) in one upsert: on
    PostgreSQL one statement of one array per column (a thousand rows sent as an
    executemany were a thousand upserts for the server to run, under the SKUs' locks)."""
    if not rows:
        return
    dialect = dialect_name(session)
    if dialect == "postgresql":
        sku, location, available, occurred_at, restock_id = (
            list(c) for c in zip(*rows, strict=True)
        )
        params = rows_params(
            dialect,
            "levels",
            sku=sku,
            location=location,
            available=available,
            occurred_at=occurred_at,
            restock_id=restock_id,
        )
        await session.execute(_pg_write_levels(), params)
        return
    await session.execute(  # compiled once, sent with many rows (as record_events)
        _upsert_levels(insert_for(session, _LEVELS)),
        [
            {"sku": s, "location": loc, "available": a, "occurred_at": at, "restock_id": r}
            for s, loc, a, at, r in rows
        ],
    )


_LEVEL_COLUMNS = ("sku", "location", "available", "occurred_at", "restock_id")


def _upsert_levels(stmt: Any) -> Any:
    changed = ("available", "occurred_at", "restock_id")
    return stmt.on_conflict_do_update(
        index_elements=[StockLevel.sku, StockLevel.location],
        set_={column: stmt.excluded[column] for column in changed},
    )


@functools.cache
def _pg_write_levels() -> Any:
    """Built once: ``INSERT … SELECT`` from the rows' arrays, upserting each location."""
    levels = rows_table(
        "postgresql",
        "levels",
        sku=String,
        location=String,
        available=Integer,
        occurred_at=UTCDateTime,
        restock_id=Uuid,
    )
    given = select(*(levels.c[column] for column in _LEVEL_COLUMNS))
    return _upsert_levels(insert(_LEVELS).from_select(list(_LEVEL_COLUMNS), given))


async def forget_events(session: AsyncSession, ids: Collection[uuid.UUID]) -> None:
    """Events refused after they were recorded (their SKU's level would pass MAX_LEVEL):
    nothing of them is kept, as a refused single event is rolled back."""
    if ids:
        await session.execute(delete(RestockEvent).where(RestockEvent.id.in_(list(ids))))


async def answer_events(session: AsyncSession, answers: Sequence[RestockOut]) -> None:
    """Store each answer with its event: one UPDATE joining the answers bound as one array
    per column (an executemany by primary key ran one UPDATE per event)."""
    if not answers:
        return
    dialect = dialect_name(session)
    params = rows_params(
        dialect,
        "answers",
        id=[a.restock_id for a in answers],
        applied=[a.applied for a in answers],
        level_after=[a.available for a in answers],
        waiting=[a.waiting for a in answers],
        first_wave=[a.first_wave for a in answers],
    )
    await session.execute(_answer_statement(dialect), params)


@functools.cache
def _answer_statement(dialect: str) -> Any:
    """Built once per backend, as Core (no mapper walk)."""
    answers = rows_table(
        dialect,
        "answers",
        id=Uuid,
        applied=Boolean,
        level_after=Integer,
        waiting=Integer,
        first_wave=Integer,
    )
    return (
        update(_EVENTS)
        .where(_EVENTS.c.id == answers.c.id, in_rows(dialect, "answers", _EVENTS.c.id))
        .values(
            applied=answers.c.applied,
            level_after=answers.c.level_after,
            waiting=answers.c.waiting,
            first_wave=answers.c.first_wave,
        )
    )
