"""The outbox's rows outside a claim: planned, cancelled, clicked, reported, followed up.

This package alone writes ``notifications``. A claimed row is written by ``service``
(the claim), ``outcomes`` and ``journal`` (what happened to its provider call); everything
other domains cause is one named operation here (``tests/test_table_owners.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Uuid, delete, func, insert, literal, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.selectable import Subquery

from backinstock import db
from backinstock.db import UTCDateTime, insert_for, new_id, new_ids
from backinstock.dispatch.models import (
    ConfirmationSent,
    DeliveryReport,
    Kind,
    Notification,
    Reason,
    Status,
    SubstituteOffer,
)

_NOTIFICATIONS = Notification.metadata.tables[Notification.__tablename__]  # Core, for speed
# Nobody is sent more than one confirmation per SKU within this.
CONFIRMATION_INTERVAL = timedelta(days=1)


class FollowedUp(Protocol):
    """The restock message a follow-up follows."""

    @property
    def subscription_id(self) -> uuid.UUID: ...
    @property
    def wave_id(self) -> uuid.UUID | None: ...
    @property
    def sku(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def queue_size(self) -> int: ...


class Step(Protocol):
    """The wave step a restock message belongs to."""

    @property
    def sku(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def level(self) -> int: ...


async def plan_restock_messages(
    session: AsyncSession,
    wave_id: uuid.UUID,
    step: Step,
    queue_size: int,
    picked: Subquery,
    limit: int,
    now: datetime,
    held_until: datetime | None = None,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """One "it's back" message for each shopper in ``picked`` (columns id, channel and n,
    their place 1.. in the queue, at most ``limit``), by :func:`_one_each`, saying their
    unit is reserved until ``held_until`` (None: the SKU holds no stock); returns
    (notification, subscription) pairs."""
    return await _one_each(
        session,
        picked,
        limit,
        now,
        {
            Notification.wave_id: literal(wave_id, Uuid),
            Notification.sku: literal(step.sku),
            Notification.kind: literal(Kind.RESTOCK.value),
            Notification.step: literal(step.step),
            Notification.level: literal(step.level),
            Notification.queue_size: literal(queue_size),
            Notification.held_until: literal(held_until, UTCDateTime),
        },
    )


async def _one_each(
    session: AsyncSession,
    shoppers: Subquery,
    count: int,
    now: datetime,
    fixed: dict[Any, Any],
    *,
    any_conflict: bool = False,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """One pending message for each of ``shoppers`` (columns id, channel and n, their place
    1.., at most ``count``), with the ``fixed`` columns of its kind; returns (notification,
    subscription) pairs. One INSERT … SELECT: the shoppers never travel to this process and
    back. Ids are made here (time-ordered UUIDs, increasing in queue order, so claims follow
    the queue) and paired with the shoppers by position. The unique (subscription, wave,
    kind) key keeps it to one message of a kind per shopper and wave; with ``any_conflict``
    every unique index of the table does (a kind that belongs to no wave has its own)."""
    nth_id = db.nth_of(session, new_ids(count))
    columns = {
        Notification.id: nth_id(shoppers.c.n),
        Notification.subscription_id: shoppers.c.id,
        Notification.channel: shoppers.c.channel,
        **fixed,
        Notification.status: literal(Status.PENDING.value),
        Notification.attempts: literal(0),
        Notification.next_attempt_at: literal(now, UTCDateTime),
        Notification.created_at: literal(now, UTCDateTime),
        Notification.contact_rank: literal(0),
        Notification.click_count: literal(0),
    }
    # The n-th id by subscript, not by joining a numbered list (which PostgreSQL ran as a
    # nested loop: count² comparisons). WHERE true: SQLite needs a WHERE before ON CONFLICT.
    rows = select(*columns.values()).where(true())
    target = ["subscription_id", "wave_id", "kind"]
    # Core, on the table: given the mapped class, SQLAlchemy took its ORM path and handled
    # every returned row again (a wave chunk's 8,000, on the writer's path).
    stmt = (
        insert_for(session, _NOTIFICATIONS)
        .from_select([c.key for c in columns], rows, include_defaults=False)
        .on_conflict_do_nothing(index_elements=None if any_conflict else target)
        .returning(_NOTIFICATIONS.c.id, _NOTIFICATIONS.c.subscription_id)
    )
    return [(r[0], r[1]) for r in await session.execute(stmt)]


async def cancel_unsent_restock(
    session: AsyncSession, wave_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The waves sold out: their restock messages not yet claimed are cancelled. Returns
    their shoppers (whose budget goes back)."""
    cancelled = await session.scalars(
        update(Notification)
        .where(
            db.one_of(session, Notification.wave_id, wave_ids),
            Notification.kind == Kind.RESTOCK,
            Notification.status == Status.PENDING,
        )
        .values(status=Status.CANCELLED.value, error=Reason.SOLD_OUT.value)
        .returning(Notification.subscription_id)
    )
    return list(cancelled)


async def plan_compensations(
    session: AsyncSession,
    wave_id: uuid.UUID,
    sku: str,
    queue: Subquery,
    count: int,
    now: datetime,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """One "sold out again" message for each shopper in ``queue`` (columns id, channel and
    n, their place 1.. in the SKU's queue; ``count`` of them), stating that place; returns
    (notification, subscription) pairs in queue order. One INSERT … SELECT, as the restock
    messages; the unique (subscription, wave, kind) key keeps it to one per wave, however
    often the wave is closed."""
    if count == 0:
        return []
    planned = await _one_each(
        session,
        queue,
        count,
        now,
        {
            Notification.wave_id: literal(wave_id, Uuid),
            Notification.sku: literal(sku),
            Notification.kind: literal(Kind.COMPENSATION.value),
            Notification.step: literal(0),
            Notification.level: literal(0),
            Notification.queue_size: literal(count),
            Notification.place: queue.c.n,
        },
    )
    return sorted(planned)


async def plan_substitutes(
    session: AsyncSession,
    sku: str,
    shoppers: Subquery,
    limit: int,
    offered: list[str],
    now: datetime,
) -> list[uuid.UUID]:
    """One "meanwhile, these are in stock" message for each of ``shoppers`` (columns id,
    channel and n, at most ``limit``), naming ``offered`` (substitute SKUs, in order), in no
    wave; returns the messages planned. The unique index on a subscription's substitute
    message keeps it to one per subscription, ever, whoever plans it at the same time."""
    if limit == 0 or not offered:
        return []
    fixed = {
        Notification.wave_id: literal(None, Uuid),
        Notification.sku: literal(sku),
        Notification.kind: literal(Kind.SUBSTITUTE.value),
        Notification.step: literal(0),
        Notification.level: literal(0),
        Notification.queue_size: literal(0),
    }
    planned = await _one_each(session, shoppers, limit, now, fixed, any_conflict=True)
    messages = sorted(notification_id for notification_id, _ in planned)
    if messages:
        await session.execute(
            insert(SubstituteOffer),
            [
                {"notification_id": message, "position": place, "substitute_sku": substitute}
                for message in messages
                for place, substitute in enumerate(offered, start=1)
            ],
        )
    return messages


async def record_substitute_click(
    session: AsyncSession, notification_id: uuid.UUID, position: int, now: datetime
) -> None:
    """A substitute's link in a substitute message was followed: counted on the offer,
    first click's time kept."""
    await session.execute(
        update(SubstituteOffer)
        .where(
            SubstituteOffer.notification_id == notification_id,
            SubstituteOffer.position == position,
        )
        .values(
            click_count=SubstituteOffer.click_count + 1,
            clicked_at=func.coalesce(SubstituteOffer.clicked_at, literal(now, UTCDateTime())),
        )
    )


async def plan_followup(
    session: AsyncSession, restock: FollowedUp, *, level: int, now: datetime
) -> uuid.UUID:
    """The follow-up of a sent restock message: same shopper, wave, step and queue, the
    stock level of now. Returns its id."""
    followup_id = new_id()
    await session.execute(
        insert(Notification).values(
            id=followup_id,
            subscription_id=restock.subscription_id,
            wave_id=restock.wave_id,
            sku=restock.sku,
            kind=Kind.FOLLOWUP.value,
            step=restock.step,
            level=level,
            queue_size=restock.queue_size,
            status=Status.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return followup_id


async def plan_confirmation(
    session: AsyncSession, subscription_id: uuid.UUID, sku: str, channel: str, now: datetime
) -> uuid.UUID:
    """The "please confirm" message of a pending subscription, to its primary contact, due
    now. It belongs to no wave. Returns its id."""
    confirmation_id = new_id()
    await session.execute(
        insert(Notification).values(
            id=confirmation_id,
            subscription_id=subscription_id,
            wave_id=None,
            sku=sku,
            kind=Kind.CONFIRMATION.value,
            step=0,
            level=0,
            queue_size=0,
            channel=channel,
            status=Status.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
    return confirmation_id


async def take_confirmation_turn(
    session: AsyncSession, sku: str, contact_index: bytes, now: datetime
) -> bool:
    """Whether a confirmation for ``sku`` may go to this contact now, recorded if so: at
    most one per CONFIRMATION_INTERVAL. One upsert, so two requests racing get one turn."""
    stmt = insert_for(session, ConfirmationSent).values(
        sku=sku, contact_index=contact_index, sent_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[ConfirmationSent.sku, ConfirmationSent.contact_index],
        set_={"sent_at": now},
        where=ConfirmationSent.sent_at <= now - CONFIRMATION_INTERVAL,
    ).returning(ConfirmationSent.sku)
    return (await session.execute(stmt)).first() is not None


async def forget_confirmation_turns(session: AsyncSession, now: datetime) -> int:
    """Turns older than the interval decide nothing any more: their blind indexes go."""
    result = await session.execute(
        delete(ConfirmationSent).where(ConfirmationSent.sent_at <= now - CONFIRMATION_INTERVAL)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def mark_followed_up(
    session: AsyncSession, restock_ids: list[uuid.UUID], now: datetime
) -> None:
    """These restock messages' follow-ups are decided (planned or not): never again."""
    await session.execute(
        update(Notification).where(Notification.id.in_(restock_ids)).values(followed_up_at=now)
    )


async def record_click(session: AsyncSession, notification_id: uuid.UUID, now: datetime) -> None:
    """The tracked link was followed: counted, and the first click's time kept."""
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id)
        .values(
            click_count=Notification.click_count + 1,
            clicked_at=func.coalesce(Notification.clicked_at, literal(now, UTCDateTime())),
        )
    )


async def record_delivery_report(
    session: AsyncSession,
    provider_id: str,
    report: DeliveryReport,
    error: str | None,
    now: datetime,
) -> bool:
    """What the provider finally said about a sent message; False when none has this id."""
    result = await session.execute(
        update(Notification)
        .where(Notification.provider_id == provider_id)
        .values(
            delivery_status=report.value,
            delivered_at=now if report is DeliveryReport.DELIVERED else None,
            error=error if error else Notification.error,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
