"""Sending notifications: claim under a lease, render, hand to the channel's sender, and
record every provider call as it starts and ends (:mod:`backinstock.dispatch.journal`).

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite has one writer), so any number
of workers on any number of hosts take disjoint batches. A claim lapses after
``CLAIM_LEASE_SECONDS`` unless its worker renews it; the sweeper then hands back what had
not started and settles what was in flight by the channel's in-doubt policy
(:func:`backinstock.dispatch.outcomes.recover_expired`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import structlog
from sqlalchemy import ColumnElement, Select, bindparam, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import contacts, db
from backinstock.catalog import service as catalog
from backinstock.catalog.models import Product
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.config import InDoubtPolicy, Settings
from backinstock.contacts import Channel
from backinstock.coupons.models import Coupon, CouponPool
from backinstock.crypto import Keys, Sealed
from backinstock.dispatch.journal import GroupCommit, Journal, first_marks
from backinstock.dispatch.models import (
    CANCELLING,
    InDoubt,
    Kind,
    Notification,
    Reason,
    Status,
    SubstituteOffer,
)
from backinstock.dispatch.outcomes import (
    Contact,
    Delivery,
    Hold,
    Send,
    Skip,
    mark_inflight,
    record_skips,
)
from backinstock.dispatch.quiet import hold_until
from backinstock.dispatch.render import MessageContext, Offer, render, wall_time, wechat_time
from backinstock.identity import (
    CLICK_TOKEN,
    CONFIRM_TOKEN,
    SHOPPER_PAGE_TOKEN,
    UNSUBSCRIBE_TOKEN,
    confirmation_code,
    contact_aad,
    profile_aad,
)
from backinstock.ops import metrics
from backinstock.ratelimit import Throttle
from backinstock.senders.base import Outcome, OutgoingMessage, Reconciler, Sender, SendResult
from backinstock.subscriptions.models import (
    IN_QUEUE,
    FallbackStatus,
    Subscription,
    SubscriptionFallback,
)
from backinstock.subscriptions.models import Status as SubscriptionStatus

log = structlog.get_logger(__name__)

BATCH = 200
_NOTIFICATIONS = Notification.metadata.tables[Notification.__tablename__]  # Core statements
# The kinds that may carry a coupon: a follow-up always, a compensation while codes last.
CARRY_COUPONS = frozenset({Kind.FOLLOWUP, Kind.COMPENSATION})
# Twilio's clock against ours, when looking for a message a crash left in doubt.
LOOKUP_SKEW = timedelta(minutes=5)
LOOKUPS_AT_ONCE = 8
# How long a wake-up's claim waits for a named row another transaction holds (_named_due)
# before it gives way: an error, and Dramatiq delivers the wake-up again. Shorter than
# PostgreSQL's deadlock check (deadlock_timeout, 1 s by default), so that in a cycle of
# waits with a sell-out's cancel or an eraser the claim is the side that fails, never the
# request: a claim waits inside its UPDATE for milliseconds, the other side for seconds.
NAMED_CLAIM_LOCK_TIMEOUT_MS = 500
# Messages made (decrypted, signed, rendered: ~0.06 ms each) between two turns of the event
# loop. The loop is shared with the other claims' provider connections; a whole claim's
# messages at once held every connection's next command back for ~12 ms.
PREPARE_BEFORE_YIELDING = 16


async def claim(
    session: AsyncSession,
    ids: list[uuid.UUID] | None,
    lease: timedelta,
    claim_id: uuid.UUID,
    now: datetime,
    limit: int = BATCH,
) -> list[uuid.UUID]:
    """Take up to ``limit`` notifications due at ``now`` (among the first ``limit`` of
    ``ids`` when given: a wake-up names at most a batch)."""
    params: dict[str, Any] = {
        "b_now": now,
        "b_limit": limit,
        "b_claim": claim_id,
        "b_until": now + lease,
    }
    dialect = db.dialect_name(session)
    if ids is not None:
        params["b_ids"] = ids[:limit]
        if dialect == "postgresql":  # it waits for a named row, but not for long
            timeout = {"b_timeout": f"{NAMED_CLAIM_LOCK_TIMEOUT_MS}ms"}
            await _lock_timeout_statement().execute(session, timeout)
    statement = _claim_statement(ids is not None, dialect)
    return [row[0] for row in await statement.all(session, params)]


@functools.cache
def _lock_timeout_statement() -> db.DriverStatement:
    """``SET LOCAL lock_timeout``: for the rest of the claim's transaction."""
    return db.DriverStatement(select(func.set_config("lock_timeout", bindparam("b_timeout"), True)))


@functools.cache
def _claim_statement(among_ids: bool, dialect: str) -> db.DriverStatement:
    """Built once: a Core statement with bound values, run by the driver on PostgreSQL.
    Built per claim as an ORM update, its cache key and the session's bookkeeping of the
    returned rows cost more than its run."""
    claimed = update(_NOTIFICATIONS).values(
        status=Status.SENDING.value,
        claim_id=bindparam("b_claim"),
        lease_until=bindparam("b_until"),
        call_started_at=None,
        attempts=_NOTIFICATIONS.c.attempts + 1,
    )
    if among_ids and dialect == "postgresql":
        claimed = claimed.where(*_named_due())
    else:
        claimed = claimed.where(
            _NOTIFICATIONS.c.id.in_(_first_due(among_ids, dialect).scalar_subquery())
        )
    return db.DriverStatement(claimed.returning(_NOTIFICATIONS.c.id))


def _first_due(among_ids: bool, dialect: str) -> Select[Any]:
    """The due messages in the order they fell due (a drain's claim: the work index),
    locked, skipping those another claim holds: every drain starts at the same head."""
    due = (
        select(_NOTIFICATIONS.c.id)
        .where(
            _NOTIFICATIONS.c.status == Status.PENDING.value,
            _NOTIFICATIONS.c.next_attempt_at <= bindparam("b_now"),
        )
        .order_by(_NOTIFICATIONS.c.next_attempt_at, _NOTIFICATIONS.c.id)
        .limit(bindparam("b_limit"))
        .with_for_update(skip_locked=True)
    )
    if among_ids:
        due = due.where(db.bound_among(dialect, _NOTIFICATIONS.c.id, "b_ids"))
    return due


def _named_due() -> tuple[ColumnElement[bool], ...]:
    """Which of the messages a wake-up names its claim takes: those still pending and due,
    found by their primary key, and locked by the UPDATE itself.

    During a big wave the table's statistics lag far behind it (a million rows written and
    claimed in minutes, before autovacuum analyses them). On statistics that counted few
    pending rows, PostgreSQL planned ``id IN (…) AND status = 'pending' ORDER BY
    next_attempt_at`` as a walk of every pending row of a status index: 41 ms a claim with
    936,000 pending (16 s each with fourteen at once), against 0.4 ms by key. So the status
    is tested in a form no index of it serves, and the key is left as the only way in.

    No ``SELECT … FOR UPDATE SKIP LOCKED`` below the UPDATE, as a drain has: the rows a
    wake-up names are its own (another claim holds one only when a wake-up was delivered
    twice, or a drain took the row), so there is nothing to skip past. A row another
    transaction holds is waited for, and PostgreSQL then tests the committed row again: one
    that claim took is no longer pending and is left, one it gave back is taken. The locking
    SELECT found each row a second time by its key and wrote a lock record of its own before
    the update (12 % of the claim's time, and one WAL record in six). A claim that waits
    can be part of a cycle (a sell-out's cancel locking the wave's pending rows in another
    order, two deliveries of one wake-up): it gives way after ``NAMED_CLAIM_LOCK_TIMEOUT_MS``,
    before PostgreSQL's deadlock check would pick a side, and Dramatiq delivers it again;
    neither side ever sends what the other took."""
    return (
        db.bound_among("postgresql", _NOTIFICATIONS.c.id, "b_ids"),
        (_NOTIFICATIONS.c.status == Status.PENDING.value).is_(true()),
        _NOTIFICATIONS.c.next_attempt_at <= bindparam("b_now"),
    )


def contacts_from(sub: _Shopper, fallbacks: list[_Fallback]) -> list[Contact]:
    """The shopper's usable contacts in the order to try them."""
    found: list[Contact] = []
    # A WeChat subscribe message spends one of the shopper's consents; none left, no message.
    consented = sub.channel != Channel.WECHAT.value or sub.wechat_consents > 0
    if consented and sub.contact_failed_at is None and sub.contact_blob and sub.contact_key_id:
        found.append(Contact(0, sub.channel, sub.contact_key_id, sub.contact_blob, sub.id))
    for f in sorted(fallbacks, key=lambda f: f.rank):
        if f.status == FallbackStatus.ACTIVE and f.contact_blob and f.contact_key_id:
            found.append(Contact(f.rank, f.channel, f.contact_key_id, f.contact_blob, f.id))
    return found


class _Planned(NamedTuple):
    """A claimed message's row as making it reads it: plain values, not an ORM object.
    Loading 200 rows as ORM objects and reading their attributes cost as much as making
    the messages (``bench/prepare.py``); a named tuple is made from the row's slice at C
    speed (a frozen dataclass set each field through ``object.__setattr__``: 1 µs a row)."""

    id: uuid.UUID
    sku: str
    kind: str
    attempts: int
    created_at: datetime
    in_doubt: str | None
    wave_id: uuid.UUID | None
    contact_rank: int
    level: int
    queue_size: int
    place: int | None
    held_until: datetime | None


class _Shopper(NamedTuple):
    """The claimed message's subscription, as making the message reads it."""

    id: uuid.UUID
    sku: str
    channel: str
    status: str
    locale: str
    timezone: str | None
    wechat_consents: int
    contact_failed_at: datetime | None
    contact_key_id: str | None
    contact_blob: bytes | None
    profile_key_id: str | None
    profile_blob: bytes | None
    last_notified_at: datetime | None
    attributes: dict[str, str] | None


class _Fallback(NamedTuple):
    """A shopper's fallback contact, as making a message reads it."""

    id: uuid.UUID
    subscription_id: uuid.UUID
    rank: int
    channel: str
    status: str
    contact_key_id: str | None
    contact_blob: bytes | None


_SUBSCRIPTIONS = Subscription.metadata.tables[Subscription.__tablename__]
_FALLBACKS = SubscriptionFallback.metadata.tables[SubscriptionFallback.__tablename__]
_PRODUCTS = Product.metadata.tables[Product.__tablename__]
_PLANNED = len(_Planned._fields)
_SHOPPER = len(_Shopper._fields)


@functools.cache
def _claimed_rows(dialect: str) -> db.DriverStatement:
    """The claimed messages with their shoppers and products, in the order they were
    planned (ids are time-ordered; the join's plan changes with the tables' shape and size).
    Each shape's columns are read by its field names, so the two cannot drift apart. The
    ids are one bound array on PostgreSQL: an ``IN`` of 200 is rendered anew each time."""
    named = db.bound_among(dialect, _NOTIFICATIONS.c.id, "b_ids")
    return db.DriverStatement(
        select(
            *(_NOTIFICATIONS.c[name] for name in _Planned._fields),
            *(_SUBSCRIPTIONS.c[name] for name in _Shopper._fields),
            _PRODUCTS.c.name,
            _PRODUCTS.c.url,
        )
        .join_from(
            _NOTIFICATIONS,
            _SUBSCRIPTIONS,
            _SUBSCRIPTIONS.c.id == _NOTIFICATIONS.c.subscription_id,
        )
        .outerjoin(_PRODUCTS, _PRODUCTS.c.sku == _NOTIFICATIONS.c.sku)
        .where(named)
        .order_by(_NOTIFICATIONS.c.id)
    )


@functools.cache
def _fallbacks_statement(dialect: str) -> db.DriverStatement:
    """The claimed shoppers' fallback contacts, built once. As an ORM select of the mapped
    class it set up the loading of entities for every claim: about 1 ms a claim, most
    claims finding none."""
    named = db.bound_among(dialect, _FALLBACKS.c.subscription_id, "b_ids")
    return db.DriverStatement(
        select(*(_FALLBACKS.c[name] for name in _Fallback._fields)).where(named)
    )


async def _claimed(
    session: AsyncSession, ids: list[uuid.UUID]
) -> list[tuple[_Planned, _Shopper, str | None, str | None]]:
    """(message, shopper, product's default name, product's URL) for each claimed id."""
    found = []
    shopper_end = _PLANNED + _SHOPPER
    statement = _claimed_rows(db.dialect_name(session))
    for row in await statement.all(session, {"b_ids": ids}):
        found.append(
            (
                _Planned._make(row[:_PLANNED]),
                _Shopper._make(row[_PLANNED:shopper_end]),
                row[shopper_end],
                row[shopper_end + 1],
            )
        )
    return found


async def prepare(
    session: AsyncSession, settings: Settings, keys: Keys, ids: list[uuid.UUID], now: datetime
) -> list[Delivery]:
    """What to do with each claimed message at ``now`` (send, hold for quiet hours, skip)."""
    rows = await _claimed(session, ids)
    coupons = await _coupons_of(session, [n.id for n, *_ in rows if n.kind in CARRY_COUPONS])
    offers = await _offers_of(session, [n.id for n, *_ in rows if n.kind == Kind.SUBSTITUTE])
    offered_skus = [o.sku for listed in offers.values() for o in listed]
    names = await catalog.names_of(session, [n.sku for n, *_ in rows] + offered_skus)
    fallbacks: dict[uuid.UUID, list[_Fallback]] = defaultdict(list)
    shoppers = {"b_ids": [s.id for _, s, _, _ in rows]}
    for row in await _fallbacks_statement(db.dialect_name(session)).all(session, shoppers):
        fallback = _Fallback._make(row)
        fallbacks[fallback.subscription_id].append(fallback)
    deliveries: list[Delivery] = []
    for made, (n, s, default, url) in enumerate(rows):
        if made and made % PREPARE_BEFORE_YIELDING == 0:
            await asyncio.sleep(0)  # the other claims' provider replies, in between
        deliveries.append(
            _delivery(
                settings,
                keys,
                n,
                s,
                catalog.name_for(s.locale, names.get(n.sku, []), default),
                url,
                fallbacks[s.id],
                now,
                coupons.get(n.id),
                [o.named(s.locale, names) for o in offers.get(n.id, [])],
            )
        )
    return deliveries


@dataclass(frozen=True)
class _Offered:
    """A substitute a substitute message names, at its place in the message."""

    position: int
    sku: str
    default_name: str | None

    def named(self, locale: str, names: dict[str, list[tuple[str, str]]]) -> tuple[int, str]:
        """(position, its name in the shopper's locale, else its SKU)."""
        name = catalog.name_for(locale, names.get(self.sku, []), self.default_name)
        return self.position, name or self.sku


async def _offers_of(
    session: AsyncSession, ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[_Offered]]:
    """What each substitute message offers, in order."""
    if not ids:
        return {}
    rows = await session.execute(
        select(
            SubstituteOffer.notification_id,
            SubstituteOffer.position,
            SubstituteOffer.substitute_sku,
            Product.name,
        )
        .outerjoin(Product, Product.sku == SubstituteOffer.substitute_sku)
        .where(SubstituteOffer.notification_id.in_(ids))
        .order_by(SubstituteOffer.notification_id, SubstituteOffer.position)
    )
    found: dict[uuid.UUID, list[_Offered]] = defaultdict(list)
    for notification_id, position, sku, default in rows:
        found[notification_id].append(_Offered(position, sku, default))
    return found


async def _coupons_of(
    session: AsyncSession, ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, str | None]]:
    """The coupon (code, description) each follow-up or compensation message carries."""
    if not ids:
        return {}
    rows = await session.execute(
        select(Coupon.notification_id, Coupon.code, CouponPool.description)
        .outerjoin(CouponPool, CouponPool.id == Coupon.pool_id)
        .where(Coupon.notification_id.in_(ids))
    )
    return {row[0]: (row[1], row[2]) for row in rows if row[0] is not None}


def _delivery(
    settings: Settings,
    keys: Keys,
    notification: _Planned,
    sub: _Shopper,
    product_name: str | None,
    product_url: str | None,
    fallbacks: list[_Fallback],
    now: datetime,
    coupon: tuple[str, str | None] | None = None,
    offers: list[tuple[int, str]] | None = None,
) -> Delivery:
    # What every outcome says of the claimed message (the fields of ``Claimed``), given
    # straight to the one made: a ``Claimed`` first, copied into it, cost a second object.
    claimed: dict[str, Any] = {
        "notification_id": notification.id,
        "subscription_id": sub.id,
        "attempts": notification.attempts,
        "created_at": notification.created_at,
        "in_doubt": notification.in_doubt,
        "wave_id": notification.wave_id,
        "consent_exhausted": (
            sub.channel == Channel.WECHAT.value
            and sub.wechat_consents <= 0
            and notification.contact_rank == 0
        ),
    }
    reason = _not_wanted(notification, sub, coupon)
    if reason is not None:
        return Skip(**claimed, reason=reason)
    confirming = notification.kind == Kind.CONFIRMATION
    # A confirmation goes to the contact that asked for it, never to a fallback.
    candidates = contacts_from(sub, [] if confirming else fallbacks)
    usable = [c for c in candidates if c.rank >= notification.contact_rank]
    if not usable:
        return Skip(**claimed, reason=Reason.NO_CONTACT)
    contact = usable[0]
    # Quiet hours hold what we decided to say; a confirmation answers what the shopper
    # asked for a moment ago, and its window is running.
    if contact.channel == Channel.SMS.value and not confirming:
        zone = _zone(settings, sub)
        held = hold_until(now, zone, settings.quiet_hours.window)
        if held is not None:
            return Hold(**claimed, contact=contact, until=held)
    try:
        message = _message(
            settings,
            keys,
            notification,
            sub,
            contact,
            product_name,
            product_url,
            coupon,
            offers or [],
            now,
        )
    except Exception as exc:  # this one message cannot be made: it fails alone, with a reason
        log.warning(
            "message_not_rendered",
            notification_id=str(notification.id),
            error_type=type(exc).__name__,
        )
        return Skip(**claimed, reason=Reason.RENDER_FAILED)
    return Send(**claimed, contact=contact, message=message)


def _not_wanted(
    notification: _Planned, sub: _Shopper, coupon: tuple[str, str | None] | None
) -> Reason | None:
    """Why a claimed message is no longer to be sent, if it is not."""
    if notification.kind == Kind.CONFIRMATION:
        return None if sub.status == SubscriptionStatus.PENDING else Reason.NOT_PENDING
    if sub.status not in IN_QUEUE:
        return Reason.NOT_WAITING
    if notification.kind == Kind.FOLLOWUP and coupon is None:
        return Reason.NO_COUPON  # the shopper was erased meanwhile
    if notification.kind == Kind.SUBSTITUTE and _told_since(notification, sub):
        return Reason.BACK_IN_STOCK
    return None


def _told_since(notification: _Planned, sub: _Shopper) -> bool:
    # A restock message planned after the offer: what the shopper waits for is back, and
    # an offer of something else would now only compete with it.
    told = sub.last_notified_at
    return told is not None and told >= notification.created_at


def _message(
    settings: Settings,
    keys: Keys,
    notification: _Planned,
    sub: _Shopper,
    contact: Contact,
    product_name: str | None,
    product_url: str | None,
    coupon: tuple[str, str | None] | None,
    offers: list[tuple[int, str]],
    now: datetime,
) -> OutgoingMessage:
    to = keys.cipher.open(Sealed(contact.key_id, contact.blob), contact_aad(contact.row_id))
    base = settings.core.public_base_url.rstrip("/")
    confirming = notification.kind == Kind.CONFIRMATION
    link = (
        f"{base}/c/{keys.tokens.sign(CONFIRM_TOKEN, sub.id)}"
        if confirming
        else f"{base}/r/{keys.tokens.sign(CLICK_TOKEN, notification.id)}"
    )
    # Each substitute's own tracked link: the message's link and the offer's place.
    substitutes = tuple(Offer(name, f"{link}/{position}") for position, name in offers)
    reserved = _reserved(settings, notification, sub, now)
    context = MessageContext(
        name=_name(keys, sub),
        product_name=product_name or sub.sku,
        link=link,
        unsubscribe_url=f"{base}/u/{keys.tokens.sign(UNSUBSCRIBE_TOKEN, sub.id)}",
        level=notification.level,
        queue_size=notification.queue_size,
        kind=notification.kind,
        place=notification.place,
        coupon_code=coupon[0] if coupon else None,
        coupon_description=coupon[1] if coupon else None,
        code=confirmation_code(keys, sub.id) if confirming else None,
        valid_hours=max(1, settings.opt_in.confirm_window_seconds // 3600),
        page_url=f"{base}/s/{keys.tokens.sign(SHOPPER_PAGE_TOKEN, sub.id)}",
        substitutes=substitutes,
        held_until=reserved[0] if reserved else None,
        attributes=sub.attributes or {},
    )
    rendered = render(contact.channel, sub.locale, context, settings.twilio.sms_max_segments)
    return OutgoingMessage(
        notification_id=notification.id,
        channel=contact.channel,
        to=to,
        to_masked=contacts.mask(Channel(contact.channel), to),
        text=rendered.text,
        subject=rendered.subject,
        html=rendered.html,
        link=context.link,
        unsubscribe_url=context.unsubscribe_url,
        data={
            "product_url": product_url,
            "product_name": context.product_name,
            "locale": sub.locale,
            "kind": notification.kind,
            "coupon_code": context.coupon_code,
            "page_url": context.page_url,
            "held_until": reserved[1] if reserved else None,
        },
    )


def _zone(settings: Settings, sub: _Shopper) -> str:
    return sub.timezone or settings.quiet_hours.default_timezone


def _reserved(
    settings: Settings, notification: _Planned, sub: _Shopper, now: datetime
) -> tuple[str, str] | None:
    """Until when the message's unit is reserved, as the copy says it (the shopper's wall
    clock) and as a WeChat ``time`` field takes it; None when nothing is held, or no longer
    (quiet hours held the message past it: its unit went on to the next shoppers)."""
    until = notification.held_until
    if until is None or until <= now:
        return None
    zone = _zone(settings, sub)
    return wall_time(until, now, zone, sub.locale), wechat_time(until, zone)


def _name(keys: Keys, sub: _Shopper) -> str | None:
    if sub.profile_blob is None or sub.profile_key_id is None:
        return None
    profile: dict[str, Any] = json.loads(
        keys.cipher.open(Sealed(sub.profile_key_id, sub.profile_blob), profile_aad(sub.id))
    )
    name = profile.get("name")
    return str(name) if name else None


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    keys: Keys,
    senders: dict[str, Sender],
    ids: list[uuid.UUID] | None,
    throttle: Throttle | None = None,
    stopping: asyncio.Event | None = None,
    clock: Clock = SYSTEM_CLOCK,
    *,
    group_commit: GroupCommit | None = None,
) -> int:
    """Claim, send and record one batch; returns how many were claimed. ``group_commit``:
    the worker process's, shared with its other claims (by default the claim's own)."""
    if stopping is not None and stopping.is_set():
        return 0  # shutting down: claim nothing, another worker will
    lease = timedelta(seconds=settings.waves.claim_lease_seconds)
    claim_id = uuid.uuid4()
    lookahead = _lookahead(settings, senders)
    # Claim, read, settle what needs no provider call and mark the first calls in flight,
    # in one transaction.
    async with db.hot_transaction(sessions) as session:
        now = clock.now()
        claimed = await claim(session, ids, lease, claim_id, now)
        deliveries = await prepare(session, settings, keys, claimed, now) if claimed else []
        await record_skips(session, claim_id, deliveries)
        marked = await mark_inflight(session, claim_id, first_marks(deliveries, lookahead), now)
    if not claimed:
        return 0
    _observe_claim(claim_id, deliveries)
    journal = Journal(
        sessions,
        claim_id,
        deliveries,
        stopping,
        lookahead=lookahead,
        group_commit=group_commit,
        clock=clock,
        marked_with_claim=marked,
        lease=(now + lease, lease),
    )
    renewal = asyncio.create_task(_keep_claimed(journal, lease, clock))
    try:
        sending = _send(settings, senders, throttle, deliveries, journal)
        await _until_stopped(sending, stopping, settings.delivery.shutdown_grace_seconds)
    finally:
        renewal.cancel()
        await journal.close()
    return len(claimed)


def _lookahead(settings: Settings, senders: dict[str, Sender]) -> dict[str, int]:
    """How many of each channel's messages a claim marks in flight ahead of their calls:
    none where the channel's sender records no starts (``Sender.marks_starts``)."""
    return {
        c.value: settings.delivery.lookahead(c.value)
        if c.value not in senders or senders[c.value].marks_starts
        else 0
        for c in Channel
    }


def _observe_claim(claim_id: uuid.UUID, deliveries: list[Delivery]) -> None:
    """Log and count what a committed claim came to before any provider call: the batch,
    and each message held for quiet hours or settled without a call."""
    waves = sorted({str(d.wave_id) for d in deliveries if d.wave_id is not None})
    log.info("batch_claimed", claim_id=str(claim_id), messages=len(deliveries), wave_ids=waves)
    for delivery in deliveries:
        if delivery.consent_exhausted:
            metrics.CONSENT_EXHAUSTED.inc()
        if isinstance(delivery, Hold):
            metrics.QUIET_HOLDS.labels(channel=delivery.contact.channel).inc()
            log.info(
                "message_held",
                notification_id=str(delivery.notification_id),
                wave_id=_text(delivery.wave_id),
                channel=delivery.contact.channel,
                until=delivery.until.isoformat(),
            )
        elif isinstance(delivery, Skip):
            if delivery.reason not in CANCELLING:
                metrics.GAVE_UP.labels(reason=delivery.reason.value).inc()
            log.info(
                "message_skipped",
                notification_id=str(delivery.notification_id),
                wave_id=_text(delivery.wave_id),
                reason=delivery.reason.value,
            )


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


async def _until_stopped(
    sending: Any, stopping: asyncio.Event | None, grace_seconds: float
) -> None:
    """Run the sends; once ``stopping`` is set (SIGTERM) no new call starts (the journal
    refuses them) and the calls in flight get ``grace_seconds`` to finish. Past that they
    are cancelled and stay in flight: in doubt, settled later by the channel's policy."""
    task = asyncio.ensure_future(sending)
    if stopping is None:
        await task
        return
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_seconds)
        if not task.done():
            log.warning("shutdown_grace_exceeded")
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stop.cancel()


async def _keep_claimed(journal: Journal, lease: timedelta, clock: Clock) -> None:
    """Renew the claim while a slow provider works through the batch: the lease can stay
    short (fast takeover after a crash) without expiring under a live worker."""
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        journal.renew(clock.now() + lease)


def channel_rate(settings: Settings, channel: str) -> float:
    """The provider's messages-per-second limit for the channel; 0 for none (dev outbox)."""
    if channel == Channel.SMS.value and settings.twilio.configured:
        return settings.twilio.twilio_rate_per_second
    if channel == Channel.EMAIL.value and settings.smtp.configured:
        return settings.smtp.smtp_rate_per_second
    if channel == Channel.WECHAT.value and settings.wechat.configured:
        return settings.wechat.wechat_rate_per_second
    return 0.0


async def _send(
    settings: Settings,
    senders: dict[str, Sender],
    throttle: Throttle | None,
    deliveries: list[Delivery],
    journal: Journal,
) -> None:
    by_channel: dict[str, list[Send]] = defaultdict(list)
    for delivery in deliveries:
        if isinstance(delivery, Send):
            by_channel[delivery.message.channel].append(delivery)
    for channel, batch in by_channel.items():
        sender = senders[channel]
        messages = await _settle_in_doubt(settings, sender, batch, journal)
        rate = channel_rate(settings, channel)
        if throttle is None or rate <= 0:
            journal.record(await sender.send_batch(messages, journal))
            continue
        while messages and not journal.stopping:  # the claim is renewed meanwhile
            grant = await throttle.take(channel, len(messages), rate)
            if grant.granted:
                granted, messages = messages[: grant.granted], messages[grant.granted :]
                journal.record(await sender.send_batch(granted, journal))
            if messages:
                await asyncio.sleep(max(grant.retry_after, 1 / rate))


async def _settle_in_doubt(
    settings: Settings, sender: Sender, batch: list[Send], journal: Journal
) -> list[OutgoingMessage]:
    """The messages to send. Where the channel reconciles, a message a crash left in doubt
    is first looked up at the provider: found, it is recorded as sent and not sent again."""
    messages = [d.message for d in batch]
    policy = settings.delivery.policy(sender.channel)
    if policy is not InDoubtPolicy.RECONCILE or not isinstance(sender, Reconciler):
        return messages
    doubtful = {d.notification_id: d for d in batch if d.in_doubt == InDoubt.UNRESOLVED}
    if not doubtful:
        return messages
    limit = asyncio.Semaphore(LOOKUPS_AT_ONCE)

    async def look_up(message: OutgoingMessage) -> SendResult | None:
        since = doubtful[message.notification_id].created_at - LOOKUP_SKEW
        async with limit:
            try:
                sid = await sender.find_sent(message, since)
            except Exception as exc:  # the provider cannot say now: ask again later
                log.warning("in_doubt_lookup_failed", error_type=type(exc).__name__)
                return SendResult(message.notification_id, Outcome.TRANSIENT, error="lookup")
        if sid is None:
            return None  # not there: send it
        return SendResult(message.notification_id, Outcome.SENT, sid, already_sent=True)

    looked_up = [m for m in messages if m.notification_id in doubtful]
    answers = await asyncio.gather(*(look_up(m) for m in looked_up))
    settled = [answer for answer in answers if answer is not None]
    journal.record(settled)
    done = {answer.notification_id for answer in settled}
    return [m for m in messages if m.notification_id not in done]


async def stale_pending(
    session: AsyncSession, older_than: timedelta, now: datetime, cap: int
) -> int:
    """Due pending work nobody has claimed for a while (a wake-up was lost, or is queued
    behind a long backlog: a drain then helps either way), counted up to ``cap``."""
    cutoff = now - older_than
    inner = (
        select(Notification.id)
        .where(Notification.status == Status.PENDING, Notification.next_attempt_at <= cutoff)
        .limit(cap)
        .subquery()
    )
    return int(await session.scalar(select(func.count()).select_from(inner)) or 0)
