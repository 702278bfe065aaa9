"""What is written about a claimed message: that its provider call started, how it ended,
that it goes back unstarted, and how a crash's leftovers are settled.

Every write of a claimed row is fenced by the claim that holds it (``claim_id``): a worker
whose lease lapsed while another took the row over can neither start nor record it.
"""

from __future__ import annotations

import functools
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningUpdate

from backinstock import db
from backinstock.config import DeliverySettings, InDoubtPolicy
from backinstock.contacts import Channel
from backinstock.db import utcnow
from backinstock.dispatch.models import CANCELLING, InDoubt, Notification, Reason, Status
from backinstock.senders.base import Outcome, OutgoingMessage, SendResult
from backinstock.subscriptions import lifecycle

MAX_ATTEMPTS = 6
_TABLE = Notification.metadata.tables[Notification.__tablename__]  # Core: see mark_inflight


@dataclass(frozen=True)
class Contact:
    rank: int  # 0 the primary contact, n the fallback of rank n
    channel: str
    key_id: str
    blob: bytes
    row_id: uuid.UUID  # the row whose id the ciphertext is bound to


@dataclass(frozen=True)
class Claimed:
    """One claimed notification, before it is known what to do with it."""

    notification_id: uuid.UUID
    subscription_id: uuid.UUID
    attempts: int
    created_at: datetime
    in_doubt: str | None  # InDoubt.UNRESOLVED: an earlier attempt may have got through
    # The wave it belongs to: every log line about the message names it.
    wave_id: uuid.UUID | None = field(default=None, kw_only=True)
    # The shopper's own WeChat contact was passed over: no subscribe-message consent left.
    consent_exhausted: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class Send(Claimed):
    """A message to hand to the contact's provider."""

    contact: Contact
    message: OutgoingMessage


@dataclass(frozen=True)
class Hold(Claimed):
    """Quiet hours at the contact: back to the queue until they end, not an attempt."""

    contact: Contact
    until: datetime


@dataclass(frozen=True)
class Skip(Claimed):
    """Nothing to send, for good: cancelled or failed, by the reason."""

    reason: Reason


# What a claimed notification comes to, once prepared: one type per case.
Delivery = Send | Hold | Skip


# A claimed row whose provider call has not started, and one whose call has (the status
# ``inflight`` is how a worker before revision 0010 wrote the latter).
_UNSTARTED = (Notification.status == Status.SENDING) & Notification.call_started_at.is_(None)
_IN_FLIGHT = (
    (Notification.status == Status.SENDING) & Notification.call_started_at.is_not(None)
) | (Notification.status == Status.INFLIGHT)
# Either: a claimed row, whatever its call's state.
_CLAIMED = Notification.status.in_([Status.SENDING, Status.INFLIGHT])


def _held_by(claim_id: uuid.UUID) -> ColumnElement[bool]:
    return Notification.claim_id == claim_id


async def _set(
    session: AsyncSession, claim_id: uuid.UUID, notification_id: uuid.UUID, **values: Any
) -> None:
    values.setdefault("lease_until", None)
    values.setdefault("claim_id", None)
    await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, _held_by(claim_id))
        .values(**values)
    )


# ------------------------------------------------------------------------- before any call
async def record_skips(
    session: AsyncSession, claim_id: uuid.UUID, deliveries: list[Delivery]
) -> None:
    """Claimed notifications that need no provider call: settled in the claim's transaction."""
    for delivery in deliveries:
        if isinstance(delivery, Skip):  # not wanted any more, or nobody can send it
            status = Status.CANCELLED if delivery.reason in CANCELLING else Status.FAILED
            await _set(
                session, claim_id, delivery.notification_id, status=status, error=delivery.reason
            )
        elif isinstance(delivery, Hold):  # not an attempt: the provider was not called
            await _set(
                session,
                claim_id,
                delivery.notification_id,
                status=Status.PENDING,
                next_attempt_at=delivery.until,
                attempts=delivery.attempts - 1,
                error=Reason.QUIET_HOURS,
            )


async def mark_inflight(
    session: AsyncSession,
    claim_id: uuid.UUID,
    messages: list[tuple[OutgoingMessage, int]],
    now: datetime,
) -> set[uuid.UUID]:
    """Record that these provider calls start (message, contact rank); returns the ids this
    claim still holds, the only ones that may be sent. The channel is kept with the row, so
    that after a crash its in-doubt policy is known. The row stays ``sending``: the mark is
    ``call_started_at``, which no index names (see ``Notification``)."""
    if not messages:
        return set()
    dialect = db.dialect_name(session)
    rows = db.rows_params(
        dialect,
        "starting",
        id=[m.notification_id for m, _ in messages],
        channel=[m.channel for m, _ in messages],
        rank=[rank for _, rank in messages],
    )
    marked = await session.scalars(
        _start_statement(dialect), {**rows, "b_claim": claim_id, "b_now": now}
    )
    return set(marked)


# Core statements built once per backend: these run with every group commit, and building
# an ORM statement (and its cache key) each time cost more than running it.
@functools.cache
def _start_statement(dialect: str) -> ReturningUpdate[Any]:
    starting = db.rows_table(dialect, "starting", id=Uuid, channel=String, rank=Integer)
    return (
        update(_TABLE)
        .where(
            _TABLE.c.id == starting.c.id,
            db.in_rows(dialect, "starting", _TABLE.c.id),
            db.unestimated(
                and_(
                    _TABLE.c.claim_id == bindparam("b_claim"),
                    _TABLE.c.status == Status.SENDING.value,
                )
            ),
        )
        .values(
            call_started_at=bindparam("b_now"),
            channel=starting.c.channel,
            contact_rank=starting.c.rank,
        )
        .returning(_TABLE.c.id)
    )


async def renew(session: AsyncSession, claim_id: uuid.UUID, until: datetime) -> None:
    """Keep the claim's rows (unstarted and in flight) from lapsing under a live worker."""
    await session.execute(_RENEW, {"b_claim": claim_id, "b_until": until})


async def release(
    session: AsyncSession, claim_id: uuid.UUID, ids: list[uuid.UUID], now: datetime
) -> None:
    """Claimed messages whose call never started go back to the queue, not an attempt
    (marked in flight ahead of time or not: this worker knows they never left)."""
    if not ids:
        return
    await session.execute(
        update(Notification)
        .where(Notification.id.in_(ids), _held_by(claim_id))
        .where(_CLAIMED)
        .values(
            status=Status.PENDING,
            attempts=Notification.attempts - 1,
            claim_id=None,
            lease_until=None,
            call_started_at=None,
            next_attempt_at=now,
        )
    )


_RENEW = (
    update(_TABLE)
    .where(
        _TABLE.c.claim_id == bindparam("b_claim"),
        _TABLE.c.status.in_([Status.SENDING.value, Status.INFLIGHT.value]),
    )
    .values(lease_until=bindparam("b_until"))
)


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Recorded:
    """What one write of results came to, for the metrics: counted by the journal once
    the transaction that wrote them has committed, so that a retried write counts once."""

    channel: str
    event: str  # sent, transient, permanent, retry, retries_exhausted, fallback, found, resent


async def record_results(
    session: AsyncSession,
    claim_id: uuid.UUID,
    deliveries: dict[uuid.UUID, Send],
    results: list[SendResult],
    now: datetime,
) -> list[Recorded]:
    """Write each provider answer; returns what they came to (see :class:`Recorded`)."""
    recorded: list[Recorded] = []
    sent = [(r, deliveries[r.notification_id]) for r in results if r.outcome is Outcome.SENT]
    if sent:
        await _record_sent(session, claim_id, sent, now)
        await lifecycle.spend_wechat_consents(session, _consents_spent([d for _, d in sent]))
        for result, delivery in sent:
            recorded.append(Recorded(delivery.contact.channel, "sent"))
            if delivery.in_doubt == InDoubt.UNRESOLVED:
                recorded.append(Recorded(delivery.contact.channel, _resolution(result).value))
    for result in results:
        delivery = deliveries[result.notification_id]
        channel = delivery.contact.channel
        if result.outcome is Outcome.TRANSIENT:
            retried = await _retry_or_fail(session, claim_id, delivery, result, now)
            recorded.append(Recorded(channel, "transient"))
            recorded.append(Recorded(channel, "retry" if retried else "retries_exhausted"))
        elif result.outcome is Outcome.PERMANENT:
            await _fall_back(session, claim_id, delivery, result, now)
            recorded += [Recorded(channel, "permanent"), Recorded(channel, "fallback")]
    return recorded


async def _record_sent(
    session: AsyncSession,
    claim_id: uuid.UUID,
    sent: list[tuple[SendResult, Send]],
    now: datetime,
) -> None:
    """One statement for every message the providers accepted (it runs with each group
    commit: a statement per message cost the database more than the rest of the commit)."""
    dialect = db.dialect_name(session)
    rows = db.rows_params(
        dialect,
        "accepted",
        id=[r.notification_id for r, _ in sent],
        provider_id=[r.provider_id for r, _ in sent],
        channel=[d.contact.channel for _, d in sent],
        rank=[d.contact.rank for _, d in sent],
        resolution=[_resolution(r).value for r, _ in sent],
    )
    params = {**rows, "b_claim": claim_id, "b_now": now}
    await _sent_statement(dialect).execute(session, params)


@functools.cache
def _sent_statement(dialect: str) -> db.DriverStatement:
    accepted = db.rows_table(
        dialect,
        "accepted",
        id=Uuid,
        provider_id=String,
        channel=String,
        rank=Integer,
        resolution=String,
    )
    return db.DriverStatement(
        update(_TABLE)
        .where(
            _TABLE.c.id == accepted.c.id,
            db.in_rows(dialect, "accepted", _TABLE.c.id),
            db.unestimated(_TABLE.c.claim_id == bindparam("b_claim")),
        )
        .values(
            status=Status.SENT.value,
            sent_at=bindparam("b_now"),
            provider_id=accepted.c.provider_id,
            channel=accepted.c.channel,
            contact_rank=accepted.c.rank,
            lease_until=None,
            claim_id=None,
            error=None,
            in_doubt=case(
                (_TABLE.c.in_doubt == InDoubt.UNRESOLVED.value, accepted.c.resolution),
                else_=_TABLE.c.in_doubt,
            ),
        )
    )


def _resolution(result: SendResult) -> InDoubt:
    """How a message that turns out to be in doubt was settled, should it be."""
    return InDoubt.FOUND if result.already_sent else InDoubt.RESENT


def _consents_spent(sent: list[Send]) -> list[uuid.UUID]:
    """The shoppers whose own WeChat consent a sent message used (not a fallback's)."""
    return [
        d.subscription_id
        for d in sent
        if d.contact.rank == 0 and d.contact.channel == Channel.WECHAT.value
    ]


def backoff(attempts: int) -> timedelta:
    """Exponential backoff with full jitter: up to 2, 4, 8 … seconds, capped at 5 minutes."""
    ceiling = min(300.0, 2.0**attempts)
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


async def _retry_or_fail(
    session: AsyncSession,
    claim_id: uuid.UUID,
    delivery: Send,
    result: SendResult,
    now: datetime,
) -> bool:
    """Back to the queue for another attempt (True), or failed once attempts run out."""
    if delivery.attempts < MAX_ATTEMPTS:
        await _set(
            session,
            claim_id,
            delivery.notification_id,
            status=Status.PENDING,
            next_attempt_at=now + backoff(delivery.attempts),
            error=result.error,
        )
        return True
    await _set(
        session, claim_id, delivery.notification_id, status=Status.FAILED, error=result.error
    )
    return False


async def _fall_back(
    session: AsyncSession,
    claim_id: uuid.UUID,
    delivery: Send,
    result: SendResult,
    now: datetime,
) -> None:
    """The contact will never work: remember that, and try the shopper's next contact."""
    contact = delivery.contact
    fallback_id = None if contact.rank == 0 else contact.row_id
    await lifecycle.fail_contact(session, delivery.subscription_id, fallback_id, now)
    await _set(
        session,
        claim_id,
        delivery.notification_id,
        status=Status.PENDING,  # the next claim picks the next usable contact, or cancels
        contact_rank=contact.rank + 1,
        attempts=0,
        next_attempt_at=now,
        error=result.error,
    )


# --------------------------------------------------------------------- after a crash
@dataclass
class Recovered:
    """What one sweep settled of the claims whose workers died."""

    requeued: int = 0  # back to the queue: never started, or in doubt to look up or resend
    in_doubt: dict[str, int] = field(default_factory=dict)  # per channel: calls left in flight
    dropped: dict[str, int] = field(default_factory=dict)  # per channel: failed by policy


async def recover_expired(
    session: AsyncSession, policies: DeliverySettings, now: datetime
) -> Recovered:
    """Claims whose worker died. Unstarted messages go back to the queue on every channel;
    a message whose call was in flight is in doubt and goes where its channel's policy
    says: back to the queue to be looked up or resent, or failed (``drop``)."""
    lapsed = (Notification.lease_until < now,)
    if not await _any_lapsed(session, now):
        return Recovered()
    back = await session.execute(
        update(Notification)
        .where(_UNSTARTED, *lapsed)
        .values(status=Status.PENDING, claim_id=None, lease_until=None, next_attempt_at=now)
    )
    recovered = Recovered(requeued=int(back.rowcount or 0))  # type: ignore[attr-defined]
    for channel in Channel:
        in_flight = (_IN_FLIGHT, Notification.channel == channel, *lapsed)
        if policies.policy(channel.value) is InDoubtPolicy.DROP:
            dropped = await session.execute(
                update(Notification)
                .where(*in_flight)
                .values(
                    status=Status.FAILED,
                    error=Reason.IN_DOUBT,
                    in_doubt=InDoubt.DROPPED,
                    claim_id=None,
                    lease_until=None,
                    call_started_at=None,
                )
            )
            if count := int(dropped.rowcount or 0):  # type: ignore[attr-defined]
                recovered.in_doubt[channel.value] = count
                recovered.dropped[channel.value] = count
            continue
        doubted = await session.execute(
            update(Notification)
            .where(*in_flight)
            .values(
                status=Status.PENDING,
                in_doubt=InDoubt.UNRESOLVED,
                error=Reason.IN_DOUBT,
                claim_id=None,
                lease_until=None,
                call_started_at=None,
                next_attempt_at=now,
            )
        )
        if count := int(doubted.rowcount or 0):  # type: ignore[attr-defined]
            recovered.requeued += count
            recovered.in_doubt[channel.value] = count
    return recovered


async def _any_lapsed(session: AsyncSession, now: datetime) -> bool:
    """Whether any claim's lease has lapsed. Every sweep asks, and it almost never has: one
    pass over the claimed rows instead of the four the settling statements make (during a
    big wave thousands of rows are claimed at once, and every worker process sweeps)."""
    found = await session.scalar(
        select(Notification.id).where(_CLAIMED, Notification.lease_until < now).limit(1)
    )
    return found is not None


async def settle_by_callback(
    session: AsyncSession, notification_id: uuid.UUID, provider_id: str
) -> bool:
    """A provider's report names a message whose call a crash left unrecorded: it was
    accepted, so it is sent (and is not sent again)."""
    # An in-flight row counts only once its lease has lapsed: a live worker records its
    # own result, and a report may well arrive before it does.
    doubtful = (
        (_IN_FLIGHT & (Notification.lease_until < utcnow()))
        | ((Notification.status == Status.PENDING) & (Notification.in_doubt == InDoubt.UNRESOLVED))
        | ((Notification.status == Status.FAILED) & (Notification.in_doubt == InDoubt.DROPPED))
    )
    settled = await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.provider_id.is_(None), doubtful)
        .values(
            status=Status.SENT,
            provider_id=provider_id,
            sent_at=utcnow(),
            in_doubt=InDoubt.CALLBACK,
            error=None,
            claim_id=None,
            lease_until=None,
        )
    )
    return bool(settled.rowcount)  # type: ignore[attr-defined]


async def in_doubt_counts(session: AsyncSession) -> list[tuple[str, str, int]]:
    """(channel, resolution, messages) for every message a crash left in doubt."""
    rows = await session.execute(
        select(Notification.channel, Notification.in_doubt, func.count())
        .where(Notification.in_doubt.is_not(None))
        .group_by(Notification.channel, Notification.in_doubt)
    )
    return [(channel or "", resolution or "", int(n)) for channel, resolution, n in rows]
