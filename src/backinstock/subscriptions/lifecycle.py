"""A subscription's life after it is made, one named operation per change.

This package alone writes ``subscriptions`` and ``subscription_fallbacks``: making and
ending them from the API is ``service``; every change another domain causes is here, so
that the states below are written in one file (``tests/test_table_owners.py`` keeps it so).

    pending ──confirm (within CONFIRM_WINDOW_SECONDS)──▶ waiting
       └──discard (unconfirmed past the window: erased, row and all)
    waiting ──notified──▶ notified ──convert──▶ converted
       ▲                     │  └──expire (messages spent, window over)──▶ expired
       └──withdraw (sold out before the message left)
    pending | waiting | notified ──unsubscribe (service)──▶ unsubscribed

Each operation is one set-based statement over the ids it is given: the restock fan-out
marks a thousand shoppers in one UPDATE.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Update, Uuid, case, column, delete, select, table, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backinstock import db
from backinstock.subscriptions.models import (
    IN_QUEUE,
    FallbackStatus,
    Status,
    Subscription,
    SubscriptionFallback,
)

# Ids per statement where a list of ids is bound as parameters.
CHUNK = 1000
_SUBSCRIPTIONS = Subscription.metadata.tables[Subscription.__tablename__]  # Core, for speed
QueueKey = tuple[int, datetime, uuid.UUID]  # (priority_rank, created_at, id): queue order
# Read (locked) only, never written here: the messages a discarded request takes with it.
_MESSAGES = table("notifications", column("id", Uuid), column("subscription_id", Uuid))


async def confirm(
    session: AsyncSession, subscription_ids: list[uuid.UUID], now: datetime, since: datetime
) -> list[uuid.UUID]:
    """The shoppers confirmed these requests (double opt-in): those made at ``since`` or
    later start waiting, in the place their registration time gives them. Returns them."""
    done = await session.scalars(
        update(Subscription)
        .where(
            Subscription.id.in_(subscription_ids),
            Subscription.status == Status.PENDING.value,
            Subscription.created_at >= since,
        )
        .values(status=Status.WAITING.value, confirmed_at=now, updated_at=now)
        .returning(Subscription.id)
    )
    return list(done)


async def discard(session: AsyncSession, subscription_ids: list[uuid.UUID]) -> None:
    """Requests nobody confirmed: erased, rows and all (their confirmation messages go
    with them); they never were subscriptions and count in no figure."""
    unconfirmed = select(Subscription.id).where(
        Subscription.id.in_(subscription_ids), Subscription.status == Status.PENDING.value
    )
    # Lock order. A worker locks a message when it claims it, then its subscription's key
    # (a second update of the row in one transaction re-checks the foreign key); the
    # cascade below would lock the subscription first, then its messages, and deadlock
    # with a worker sending this request's confirmation. Wait for that claim instead.
    await session.execute(
        select(_MESSAGES.c.id).where(_MESSAGES.c.subscription_id.in_(unconfirmed)).with_for_update()
    )
    await session.execute(
        delete(SubscriptionFallback).where(SubscriptionFallback.subscription_id.in_(unconfirmed))
    )
    await session.execute(delete(Subscription).where(Subscription.id.in_(unconfirmed)))


async def mark_notified(
    session: AsyncSession, subscription_ids: list[uuid.UUID], now: datetime
) -> QueueKey:
    """A message was planned for each of these shoppers: it counts against their budget.
    Returns the last queue key among them (where the next chunk of the step continues).

    A Core statement of the table: as an ORM update, SQLAlchemy looked each returned row up
    in the session's identity map afterwards (a chunk's 8,000, for no object loaded), on
    the writer's path between two statements. On PostgreSQL the database picks the last
    key (the update in a WITH), so the chunk's keys are not sent back to be compared here;
    SQLite allows no update in a WITH."""
    told = db.numbered(session, subscription_ids)
    marked = (
        update(_SUBSCRIPTIONS)
        .where(_SUBSCRIPTIONS.c.id.in_(select(told.c.id)))
        .values(
            status=Status.NOTIFIED.value,
            notification_count=_SUBSCRIPTIONS.c.notification_count + 1,
            last_notified_at=now,
            updated_at=now,
        )
        .returning(_SUBSCRIPTIONS.c.priority_rank, _SUBSCRIPTIONS.c.created_at, _SUBSCRIPTIONS.c.id)
    )
    if db.dialect_name(session) != "postgresql":
        return max((r[0], r[1], r[2]) for r in await session.execute(marked))
    keys = marked.cte("marked")
    key = (keys.c.priority_rank, keys.c.created_at, keys.c.id)
    last = (await session.execute(select(*key).order_by(*(k.desc() for k in key)).limit(1))).one()
    return (last[0], last[1], last[2])


async def withdraw(session: AsyncSession, subscription_ids: Sequence[uuid.UUID]) -> None:
    """Their message was cancelled before it left: the shoppers get their budget back, and
    one who had no other message is waiting again."""
    for start in range(0, len(subscription_ids), CHUNK):
        await session.execute(
            update(Subscription)
            .where(Subscription.id.in_(subscription_ids[start : start + CHUNK]))
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


async def convert(session: AsyncSession, subscription_id: uuid.UUID, now: datetime) -> None:
    """The shopper bought: no further restock messages, and no follow-up."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id, Subscription.status.in_(IN_QUEUE))
        .values(status=Status.CONVERTED.value, stopped_at=now)
    )


async def expire(session: AsyncSession, subscription_ids: list[uuid.UUID], now: datetime) -> None:
    """Every message spent and the attribution window over: nothing more can happen."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(subscription_ids))
        .values(status=Status.EXPIRED.value, stopped_at=now, updated_at=now)
    )


async def erase(session: AsyncSession, subscription_ids: list[uuid.UUID], now: datetime) -> None:
    """Forget the contacts, name and consent IP; the row stays for the figures."""
    await session.execute(
        update(Subscription)
        .where(Subscription.id.in_(subscription_ids))
        .values(
            contact_key_id=None,
            contact_blob=None,
            contact_index=None,
            profile_key_id=None,
            profile_blob=None,
            updated_at=now,
        )
    )
    await session.execute(
        update(SubscriptionFallback)
        .where(SubscriptionFallback.subscription_id.in_(subscription_ids))
        .values(contact_key_id=None, contact_blob=None, contact_index=None)
    )


async def fail_contact(
    session: AsyncSession, subscription_id: uuid.UUID, fallback_id: uuid.UUID | None, now: datetime
) -> None:
    """A provider rejected a contact for good: the primary (``fallback_id`` None) or one
    fallback. Later messages use the shopper's next contact."""
    if fallback_id is None:
        await session.execute(
            update(Subscription)
            .where(Subscription.id == subscription_id)
            .values(contact_failed_at=now)
        )
        return
    await session.execute(
        update(SubscriptionFallback)
        .where(SubscriptionFallback.id == fallback_id)
        .values(status=FallbackStatus.FAILED.value)
    )


async def fail_fallbacks_by_index(session: AsyncSession, indexes: list[bytes]) -> None:
    """The contact opted out: it is nobody's fallback any more."""
    await session.execute(
        update(SubscriptionFallback)
        .where(SubscriptionFallback.contact_index.in_(indexes))
        .values(status=FallbackStatus.FAILED.value)
    )


async def spend_wechat_consents(session: AsyncSession, subscription_ids: list[uuid.UUID]) -> None:
    """A WeChat subscribe message was sent to each: every consent allows exactly one."""
    if subscription_ids:
        dialect = db.dialect_name(session)
        rows = db.rows_params(dialect, "spent", id=list(subscription_ids))
        await session.execute(_spend_statement(dialect), rows)


@functools.cache
def _spend_statement(dialect: str) -> Update:
    """Built once per backend, as Core: this runs with every group commit of a WeChat wave.
    Ids bound as one array (an ``IN`` list is a new statement for PostgreSQL to plan at
    every length), and no ORM statement (whose session synchronisation compiled the
    condition anew at each run, the largest cost of a WeChat commit)."""
    spent = db.rows_table(dialect, "spent", id=Uuid)
    return (
        update(_SUBSCRIPTIONS)
        .where(_SUBSCRIPTIONS.c.id == spent.c.id, db.in_rows(dialect, "spent", _SUBSCRIPTIONS.c.id))
        .values(wechat_consents=_SUBSCRIPTIONS.c.wechat_consents - 1)
    )


async def reseal(
    session: AsyncSession, row: Subscription | SubscriptionFallback, values: dict[str, Any]
) -> None:
    """Store a row's contact (and profile) sealed and indexed under the newest keys."""
    if isinstance(row, Subscription):
        stmt = update(Subscription).where(Subscription.id == row.id)
    else:
        stmt = update(SubscriptionFallback).where(SubscriptionFallback.id == row.id)
    await session.execute(stmt.values(**values))
