"""Running a wave's steps: claim the wave under a lease, size the step on the level at that
moment, and write its notifications in queue order, in chunks that each commit and wake the
senders. Every decision is re-derived from the database, so a step interrupted by a crash
is resumed by whichever worker claims the wave next."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import case, exists, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from backinstock import db
from backinstock.config import Settings
from backinstock.db import insert_for, new_id, utcnow
from backinstock.dispatch.models import Kind, Notification
from backinstock.restocks.models import StockLevel, Wave
from backinstock.subscriptions.models import IN_QUEUE, Status, Subscription

CHUNK = 500  # notifications written per transaction and carried per broker message
QueueKey = tuple[int, datetime, uuid.UUID]
Candidate = tuple[int, datetime, uuid.UUID, str]  # the queue key, then the channel


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


async def _claim(session: AsyncSession, settings: Settings, wave_id: uuid.UUID) -> Wave | None:
    """Take the wave's lease if it has work: a due step, or a step not fully written."""
    now = utcnow()
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
) -> int:
    """Run every step of the wave that is due now; returns how many notifications it wrote."""
    written = 0
    while True:
        async with db.transaction(sessions) as session:
            wave = await _claim(session, settings, wave_id)
            if wave is None:
                return written
            queue_size = await queue_length(session, wave.sku)
        written += await _write_step(sessions, settings, wave_id, queue_size, wake_senders)
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
) -> int:
    written = 0
    after: QueueKey | None = None
    while True:
        async with db.transaction(sessions) as session:
            ids, after = await _write_chunk(session, settings, wave_id, queue_size, after)
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
) -> tuple[list[uuid.UUID], QueueKey | None]:
    now = utcnow()
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
    candidates = await _next_in_queue(
        session, settings, row.sku, wave_id, after, min(CHUNK, row.target - row.planned)
    )
    if not candidates:  # the queue is exhausted: this step is complete
        await session.execute(update(Wave).where(Wave.id == wave_id).values(target=Wave.planned))
        return [], None
    written = await _insert_notifications(session, wave_id, row, queue_size, candidates, now)
    ids = [notification_id for notification_id, _ in written]
    await session.execute(
        update(Subscription)
        .where(Subscription.id.in_([sub_id for _, sub_id in written]))
        .values(
            status=Status.NOTIFIED.value,
            notification_count=Subscription.notification_count + 1,
            last_notified_at=now,
            updated_at=now,
        )
    )
    await session.execute(
        update(Wave).where(Wave.id == wave_id).values(planned=Wave.planned + len(ids))
    )
    last = candidates[-1]
    return ids, (last[0], last[1], last[2])


async def _next_in_queue(
    session: AsyncSession,
    settings: Settings,
    sku: str,
    wave_id: uuid.UUID,
    after: QueueKey | None,
    limit: int,
) -> list[Candidate]:
    key = tuple_(Subscription.priority_rank, Subscription.created_at, Subscription.id)
    query = (
        select(
            Subscription.priority_rank,
            Subscription.created_at,
            Subscription.id,
            Subscription.channel,
        )
        .where(*_eligible(settings, sku, wave_id))
        .order_by(Subscription.priority_rank, Subscription.created_at, Subscription.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(key > tuple_(*after))
    return [(r[0], r[1], r[2], r[3]) for r in await session.execute(query)]


async def _insert_notifications(
    session: AsyncSession,
    wave_id: uuid.UUID,
    wave: object,
    queue_size: int,
    candidates: list[Candidate],
    now: datetime,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    rows = [
        {
            "id": new_id(),
            "subscription_id": sub_id,
            "channel": channel,
            "wave_id": wave_id,
            "sku": wave.sku,  # type: ignore[attr-defined]
            "step": wave.step,  # type: ignore[attr-defined]
            "level": wave.level,  # type: ignore[attr-defined]
            "queue_size": queue_size,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for _, _, sub_id, channel in candidates
    ]
    # Rows as parameters (executemany with RETURNING), not .values(rows): the statement
    # then compiles once and is cached, instead of a 500-row statement built per chunk.
    stmt = (
        insert_for(session, Notification)
        .on_conflict_do_nothing(
            index_elements=[Notification.subscription_id, Notification.wave_id, Notification.kind]
        )
        .returning(Notification.id, Notification.subscription_id)
    )
    return [(r[0], r[1]) for r in await session.execute(stmt, rows)]


async def due(session: AsyncSession, limit: int = 1000) -> list[uuid.UUID]:
    """Open waves with work and no live lease: a step due, or a step not fully written."""
    now = utcnow()
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
