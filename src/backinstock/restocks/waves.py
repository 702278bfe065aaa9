"""Running a wave's steps: claim the wave under a lease, size the step on the level at that
moment, and write its notifications in queue order, in chunks that each commit and wake the
senders. Every decision is re-derived from the database, so a step interrupted by a crash
is resumed by whichever worker claims the wave next."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import (
    Row,
    Uuid,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement, Grouping
from sqlalchemy.sql.selectable import NamedFromClause, Subquery

from backinstock import db
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.config import Settings
from backinstock.db import UTCDateTime, insert_for, new_id
from backinstock.dispatch.models import Kind, Notification
from backinstock.restocks.models import StockLevel, Wave
from backinstock.subscriptions.models import IN_QUEUE, Status, Subscription

# Notifications written per transaction; woken in messages of dispatch.BATCH (a multiple of
# it: no short messages). Larger chunks mean fewer round trips; the transaction stays short
# because the rows never leave the database.
CHUNK = 1000
QueueKey = tuple[int, datetime, uuid.UUID]
WaveRow = Row[str, int, int, int, int]  # sku, step, level, planned, target


async def current_level(session: AsyncSession, sku: str) -> int:
    total = await session.scalar(
        select(func.coalesce(func.sum(StockLevel.available), 0)).where(StockLevel.sku == sku)
    )
    return int(total or 0)


def _not_told_in_wave(wave_id: uuid.UUID) -> ColumnElement[bool]:
    return ~exists().where(
        Notification.subscription_id == Subscription.id, Notification.wave_id == wave_id
    )


def _eligible(settings: Settings, sku: str, wave_id: uuid.UUID) -> list[ColumnElement[bool]]:
    return [
        Subscription.sku == sku,
        Subscription.status.in_(IN_QUEUE),
        Subscription.notification_count < settings.waves.max_notifications,
        _not_told_in_wave(wave_id),
    ]


async def eligible_count(
    session: AsyncSession, settings: Settings, sku: str, wave_id: uuid.UUID
) -> int:
    query = select(func.count()).select_from(Subscription).where(*_eligible(settings, sku, wave_id))
    return int(await session.scalar(query) or 0)


async def close(session: AsyncSession, wave_id: uuid.UUID, now: datetime) -> None:
    """Sold out: no further steps, and messages not yet handed to a provider are withdrawn
    (their shoppers keep their notification budget and place)."""
    await session.execute(
        update(Wave)
        .where(Wave.id == wave_id)
        .values(status="closed", closed_at=now, next_step_at=None, lease_until=None)
    )
    cancelled = list(
        await session.scalars(
            update(Notification)
            .where(
                Notification.wave_id == wave_id,
                Notification.kind == Kind.RESTOCK,
                Notification.status == "pending",
            )
            .values(status="cancelled", error="sold_out")
            .returning(Notification.subscription_id)
        )
    )
    for start in range(0, len(cancelled), CHUNK):
        await session.execute(
            update(Subscription)
            .where(Subscription.id.in_(cancelled[start : start + CHUNK]))
            .values(
                notification_count=Subscription.notification_count - 1,
                status=_status_after_withdrawal(),
            )
        )


def _status_after_withdrawal() -> ColumnElement[str]:
    return case(
        (
            (Subscription.notification_count <= 1) & (Subscription.status == Status.NOTIFIED),
            Status.WAITING.value,
        ),
        else_=Subscription.status,
    )


def _lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.waves.claim_lease_seconds)


async def _claim(
    session: AsyncSession, settings: Settings, wave_id: uuid.UUID, now: datetime
) -> Wave | None:
    """Take the wave's lease if it has work: a due step, or a step not fully written."""
    claimed = await session.scalar(
        update(Wave)
        .where(
            Wave.id == wave_id,
            Wave.status == "open",
            or_(Wave.lease_until.is_(None), Wave.lease_until < now),
            or_(Wave.next_step_at <= now, Wave.planned < Wave.target),
        )
        .values(lease_until=now + _lease(settings))
        .returning(Wave.id)
    )
    if claimed is None:
        return None
    wave = await session.get(Wave, wave_id, populate_existing=True)
    assert wave is not None
    if wave.next_step_at is not None and wave.next_step_at <= now:
        level = await current_level(session, wave.sku)
        if level == 0:
            await close(session, wave.id, now)
            return None
        wave.step += 1
        wave.level = level
        wave.target += math.ceil(level * settings.waves.batch_multiplier)
        wave.next_step_at = now + timedelta(seconds=settings.waves.batch_interval_seconds)
    return wave


async def run(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    wave_id: uuid.UUID,
    wake_senders: Callable[[list[uuid.UUID]], None],
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Run every step of the wave that is due now; returns how many notifications it wrote."""
    written = 0
    while True:
        async with db.transaction(sessions) as session:
            wave = await _claim(session, settings, wave_id, clock.now())
            if wave is None:
                return written
            queue_size = await queue_length(session, wave.sku)
        written += await _write_step(sessions, settings, wave_id, queue_size, wake_senders, clock)
        async with db.transaction(sessions) as session:
            await session.execute(update(Wave).where(Wave.id == wave_id).values(lease_until=None))


async def queue_length(session: AsyncSession, sku: str) -> int:
    """Shoppers in the SKU's queue (waiting, or notified and not yet converted)."""
    query = select(func.count()).where(Subscription.sku == sku, Subscription.status.in_(IN_QUEUE))
    return int(await session.scalar(query) or 0)


async def _write_step(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    wave_id: uuid.UUID,
    queue_size: int,
    wake_senders: Callable[[list[uuid.UUID]], None],
    clock: Clock,
) -> int:
    written = 0
    after: QueueKey | None = None
    while True:
        async with db.transaction(sessions) as session:
            ids, after = await _write_chunk(
                session, settings, wave_id, queue_size, after, clock.now()
            )
            if ids:
                db.after_commit(session, lambda ids=ids: wake_senders(ids))  # type: ignore[misc]
        if not ids:
            return written
        written += len(ids)


async def _write_chunk(
    session: AsyncSession,
    settings: Settings,
    wave_id: uuid.UUID,
    queue_size: int,
    after: QueueKey | None,
    now: datetime,
) -> tuple[list[uuid.UUID], QueueKey | None]:
    # Locks the wave row: a sell-out closing the wave waits for this chunk, then cancels it.
    row = (
        await session.execute(
            update(Wave)
            .where(Wave.id == wave_id, Wave.status == "open")
            .values(lease_until=now + _lease(settings))
            .returning(Wave.sku, Wave.step, Wave.level, Wave.planned, Wave.target)
        )
    ).one_or_none()
    if row is None or row.planned >= row.target:
        return [], None
    limit = min(CHUNK, row.target - row.planned)
    picked = _next_in_queue(settings, row.sku, wave_id, after, limit)
    written = await _insert_notifications(session, wave_id, row, queue_size, picked, limit, now)
    if not written:  # the queue is exhausted: this step is complete
        await session.execute(update(Wave).where(Wave.id == wave_id).values(target=Wave.planned))
        return [], None
    last = await _mark_notified(session, [sub_id for _, sub_id in written], now)
    await session.execute(
        update(Wave).where(Wave.id == wave_id).values(planned=Wave.planned + len(written))
    )
    return sorted(notification_id for notification_id, _ in written), last


def _next_in_queue(
    settings: Settings, sku: str, wave_id: uuid.UUID, after: QueueKey | None, limit: int
) -> Subquery:
    """The next ``limit`` shoppers of the step, numbered 1.. in queue order."""
    order = (Subscription.priority_rank, Subscription.created_at, Subscription.id)
    head = (
        select(Subscription.id, Subscription.channel, *order[:2])
        .where(*_eligible(settings, sku, wave_id))
        .order_by(*order)
        .limit(limit)
    )
    if after is not None:
        head = head.where(tuple_(*order) > tuple_(*after))
    head_rows = head.subquery("head")
    ranked = select(
        head_rows.c.id,
        head_rows.c.channel,
        func.row_number()
        .over(order_by=(head_rows.c.priority_rank, head_rows.c.created_at, head_rows.c.id))
        .label("n"),
    )
    return ranked.subquery("picked")


async def _insert_notifications(
    session: AsyncSession,
    wave_id: uuid.UUID,
    wave: WaveRow,
    queue_size: int,
    picked: Subquery,
    limit: int,
    now: datetime,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """One INSERT … SELECT: the shoppers never travel to this process and back. Ids are made
    here (time-ordered UUIDs, increasing in queue order, so claims follow the queue) and
    paired with the shoppers by position."""
    nth_id = _nth(session, [new_id() for _ in range(limit)])
    columns = {
        Notification.id: nth_id(picked.c.n),
        Notification.subscription_id: picked.c.id,
        Notification.channel: picked.c.channel,
        Notification.wave_id: literal(wave_id, Uuid),
        Notification.sku: literal(wave.sku),
        Notification.kind: literal(Kind.RESTOCK),
        Notification.step: literal(wave.step),
        Notification.level: literal(wave.level),
        Notification.queue_size: literal(queue_size),
        Notification.status: literal("pending"),
        Notification.attempts: literal(0),
        Notification.next_attempt_at: literal(now, UTCDateTime),
        Notification.created_at: literal(now, UTCDateTime),
        Notification.contact_rank: literal(0),
        Notification.click_count: literal(0),
    }
    # The n-th id by subscript, not by joining a numbered list (which PostgreSQL ran as a
    # nested loop: limit² comparisons). WHERE true: SQLite needs a WHERE before ON CONFLICT.
    rows = select(*columns.values()).where(true())
    stmt = (
        insert_for(session, Notification)
        .from_select(list(columns), rows, include_defaults=False)
        .on_conflict_do_nothing(
            index_elements=[Notification.subscription_id, Notification.wave_id, Notification.kind]
        )
        .returning(Notification.id, Notification.subscription_id)
    )
    return [(r[0], r[1]) for r in await session.execute(stmt)]


async def _mark_notified(
    session: AsyncSession, subscription_ids: list[uuid.UUID], now: datetime
) -> QueueKey:
    """Count the message against each shopper; returns the chunk's last queue key."""
    told = _numbered(session, subscription_ids)
    keys = await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(select(told.c.id)))
        .values(
            status=Status.NOTIFIED.value,
            notification_count=Subscription.notification_count + 1,
            last_notified_at=now,
            updated_at=now,
        )
        .returning(Subscription.priority_rank, Subscription.created_at, Subscription.id)
    )
    return max((r[0], r[1], r[2]) for r in keys)


def _nth(
    session: AsyncSession, values: list[uuid.UUID]
) -> Callable[[ColumnElement[int]], ColumnElement[uuid.UUID]]:
    """The n-th (1-based) of ``values``, bound as one array."""
    if db.dialect_name(session) == "postgresql":
        array = Grouping(literal(values, postgresql.ARRAY(Uuid)))  # ($1::UUID[])[n]
        return lambda n: array[n]
    # SQLite keeps UUIDs as 32 hex digits, the form a JSON array of .hex strings holds.
    document = literal(json.dumps([v.hex for v in values]))
    return lambda n: type_coerce(func.json_extract(document, func.printf("$[%d]", n - 1)), Uuid)


def _numbered(session: AsyncSession, values: list[uuid.UUID]) -> NamedFromClause:
    """Ids as a table (id, n), n = 1.. in list order: one bound array, not a parameter each."""
    if db.dialect_name(session) == "postgresql":
        array = literal(values, postgresql.ARRAY(Uuid))
        return func.unnest(array).table_valued("id", with_ordinality="n").render_derived("numbered")
    # SQLite keeps UUIDs as 32 hex digits, the form json_each hands back.
    each = func.json_each(literal(json.dumps([v.hex for v in values]))).table_valued("key", "value")
    each = each.alias("each")
    return select(
        type_coerce(each.c.value, Uuid).label("id"), (each.c.key + 1).label("n")
    ).subquery("numbered")


async def due(session: AsyncSession, now: datetime, limit: int = 1000) -> list[uuid.UUID]:
    """Open waves with work and no live lease: a step due, or a step not fully written."""
    query = (
        select(Wave.id)
        .where(
            Wave.status == "open",
            or_(Wave.lease_until.is_(None), Wave.lease_until < now),
            or_(Wave.next_step_at <= now, Wave.planned < Wave.target),
        )
        .limit(limit)
    )
    return list(await session.scalars(query))
