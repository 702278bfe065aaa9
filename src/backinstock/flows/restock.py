"""A restock becomes messages.

1. **The event** (:func:`record`, from ``POST /v1/restocks``): the location's level is
   applied; going from 0 to more opens the SKU's wave with its first step due at once, a
   rise while it is open makes the next step due at once, and 0 sells it out. The answer's
   ``first_wave`` is the due step's size, from the sizing the step itself applies
   (``waves.step_count``, on the SKU's rules: ``catalog.policy``).
2. **The step** (:func:`run`, the ``waves.run`` actor): under the wave's lease, the step is
   sized on the level and the SKU's rules (its batch multiplier and interval, or the
   settings') of that moment, then written in queue order, in chunks that each commit and
   wake the senders.
3. **A chunk** (:func:`_write_chunk`): one ``INSERT … SELECT`` of the next shoppers' messages
   (dispatch), one of their holds, until the chunk's time plus the SKU's hold time
   (restocks; none when it is 0), one UPDATE counting them against each shopper
   (subscriptions), one UPDATE of the wave's progress (restocks). No shopper row travels
   to Python and back. A step is sized on the free units: the level less the units held
   for shoppers told before (``waves.free_units``).
4. **Sold out** (:func:`sell_out`): the wave closes, its holds end, its messages not yet
   claimed are cancelled, and their shoppers get their budget back. With
   SOLDOUT_COMPENSATION (or the SKU's ``soldout_compensation``) on, every shopper still in
   the SKU's queue (never told in the wave, or told and not bought) gets one "sold out
   again" message stating their place, planned by one INSERT … SELECT in the sell-out's
   own transaction (so a closed wave always has its messages: nothing to recover), and
   for ``coupon`` an uploaded code each while the pools last (one UPDATE).
5. **Holds expire** (:func:`release_expired_holds`, from the sweeper's tick): the units are
   free again, and the wave's next step is due at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from sqlalchemy import exists, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Subquery

from backinstock import db
from backinstock.catalog import policy as product_policy
from backinstock.catalog import service as catalog
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.config import Settings, SoldoutCompensation
from backinstock.coupons import service as coupons
from backinstock.dispatch import notifications
from backinstock.dispatch.models import Kind, Notification
from backinstock.fields import refuse_future
from backinstock.ops import logging as ops_logging
from backinstock.ops import metrics
from backinstock.restocks import holds, waves
from backinstock.restocks import service as stock
from backinstock.restocks.models import Wave
from backinstock.restocks.schemas import RestockIn, RestockOut
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.lifecycle import QueueKey
from backinstock.subscriptions.models import IN_QUEUE, Subscription

log = structlog.get_logger(__name__)
# Notifications written per transaction; woken in messages of dispatch.BATCH (multiples of
# it: no short messages). A step's first chunk is CHUNK, so that its first messages leave
# at once; each next one is twice the last, up to LARGEST_CHUNK. The writer shares its
# worker's event loop with the claims sending, so every statement of a chunk waits its turn
# behind theirs: larger chunks pay that wait for more rows (a 100,000-row step during a wave
# on a saturated host: 30.9 s in chunks of 1,000, 19.4 s growing; alone, 8.4 s). A
# transaction stays short: its rows never leave the database.
CHUNK = 1000
LARGEST_CHUNK = 8000
# Tries at a sell-out's compensation coupons while follow-ups race it for the same
# shoppers: each failed try means one more follow-up committed in that very moment.
COUPON_ATTEMPTS = 3


@dataclass(frozen=True)
class RestockOutcome:
    result: RestockOut
    replay: bool
    wave_due: uuid.UUID | None  # a wave whose step the caller should wake a worker for
    # "Sold out again" messages the sell-out planned, for the caller to wake senders for.
    compensations: list[uuid.UUID] = field(default_factory=list)


# ------------------------------------------------------------------------------ the event
def product_info(payload: RestockIn) -> catalog.ProductInfo:
    """A stock event's product: its ``name`` is the default, ``names`` are per locale."""
    if payload.product is None:
        return catalog.ProductInfo()
    given = payload.product
    names = tuple((payload.product.names or {}).items())
    return catalog.ProductInfo(given.name, given.url, given.image_url, None, names)


def check_event(
    settings: Settings, payload: RestockIn, system_now: datetime | None = None
) -> catalog.ProductInfo:
    """What validation alone cannot say: 422 for an event from the future (by the system's
    time, read once per request for a bulk one) or a product link the settings refuse.
    Returns the event's product."""
    skew = settings.core.max_clock_skew_seconds
    refuse_future("occurred_at", payload.occurred_at, skew, system_now)
    product = product_info(payload)
    catalog.check_product(settings.core, product)
    return product


async def record(
    session: AsyncSession, settings: Settings, payload: RestockIn, now: datetime
) -> RestockOutcome:
    """Record one stock event at ``now`` (the service's clock: the time its wave opens or
    moves, and the time its answer counts holds at, as the step will)."""
    product = check_event(settings, payload)
    occurred_at = payload.occurred_at or now
    event_id = await stock.record_event(session, payload, occurred_at, now)
    if event_id is None:
        replayed = await stock.stored_answer(session, payload)
        return RestockOutcome(replayed, replay=True, wave_due=None)
    change = await stock.apply_level(session, payload, product, occurred_at, event_id)
    compensations: list[uuid.UUID] = []
    changes = {payload.sku: SkuChange(change, event_id)}
    move = (await move_waves(session, settings, changes, now, compensations))[payload.sku]
    result = RestockOut(
        restock_id=event_id,
        sku=payload.sku,
        available=change.after,
        waiting=move.waiting,
        first_wave=move.first_wave,
        applied=change.applied,
    )
    await stock.answer_event(session, result)
    return RestockOutcome(result, replay=False, wave_due=move.wave_due, compensations=compensations)


@dataclass(frozen=True)
class SkuChange:
    """One SKU's level change, made by its (last applied) event ``event_id``."""

    change: stock.LevelChange
    event_id: uuid.UUID


@dataclass(frozen=True)
class WaveMove:
    # The wave whose step is now due, to wake a worker for; None also when it was due
    # already (its wake-up is queued, or a worker is running it and sees the new level when
    # its step ends; the sweeper finds it either way).
    wave_due: uuid.UUID | None
    first_wave: int
    waiting: int


async def move_waves(
    session: AsyncSession,
    settings: Settings,
    changes: dict[str, SkuChange],
    now: datetime,
    compensations: list[uuid.UUID],
) -> dict[str, WaveMove]:
    """Open, advance or sell out each SKU's wave (in SKU order) on its level change, and size
    the step now due (``waves.step_count``, the sizing the step itself applies): one query
    each for the SKUs' open waves, rules, held units, eligible shoppers and queues, so a sync
    of a thousand SKUs costs a handful of statements, and one event the same handful.

    - an open wave whose SKU fell to 0 sells out (``compensations`` gets the messages);
    - an open wave whose level rose has its next step due at once;
    - a SKU from 0 to more opens a wave whose first step is due at once."""
    skus = sorted(changes)
    # Only a rise or a fall to 0 moves a wave: the others' are neither read nor locked (a
    # location's sell-out in a sync lowers every SKU's level without moving its wave).
    moving = [sku for sku in skus if _moves_wave(changes[sku].change)]
    open_now = await waves.open_waves_of(session, moving)
    due: dict[str, waves.WaveState] = {}
    opening: list[tuple[str, uuid.UUID, int]] = []
    sold_out: list[uuid.UUID] = []
    woken: set[uuid.UUID] = set()
    for sku in skus:
        wave, change = open_now.get(sku), changes[sku].change
        if wave is not None and change.after == 0:
            sold_out.append(wave.id)
        elif wave is not None and change.after > change.before:
            if wave.next_step_at is not None and wave.next_step_at <= now:
                woken.add(wave.id)  # due already: a wake-up is queued, or a step runs
            due[sku] = wave
        elif wave is None and change.before == 0 and change.after > 0:
            opening.append((sku, changes[sku].event_id, change.after))
    if sold_out:
        compensations.extend(await sell_out_many(session, settings, sold_out, now))
    # A wave due already stays due: only the others are written (a sync's every request
    # would otherwise rewrite each of its SKUs' waves).
    request = ops_logging.request_id()
    await waves.make_due_all(
        session, [w.id for w in due.values() if w.id not in woken], now, request
    )
    for opened in await waves.open_many(session, opening, now, request):
        due[opened.sku] = opened
    sizes = await _first_steps(
        session, settings, due, {s: changes[s].change.after for s in due}, now
    )
    queues = await queue_lengths(session, skus)
    return {
        sku: WaveMove(
            due[sku].id if sku in due and due[sku].id not in woken else None,
            sizes.get(sku, 0),
            queues.get(sku, 0),
        )
        for sku in skus
    }


def _moves_wave(change: stock.LevelChange) -> bool:
    return change.after == 0 or change.after > change.before


async def _first_steps(
    session: AsyncSession,
    settings: Settings,
    due: dict[str, waves.WaveState],
    levels: dict[str, int],
    now: datetime,
) -> dict[str, int]:
    if not due:
        return {}
    skus = list(due)
    eligible = await eligible_counts(session, settings, due)
    rules = await product_policy.effective_many(session, settings, skus)
    held = await holds.held_by_sku(session, skus, now)
    return {
        sku: waves.step_count(rules[sku], wave, levels[sku], eligible.get(sku, 0), held[sku])
        for sku, wave in due.items()
    }


async def sell_out(
    session: AsyncSession, settings: Settings, wave_id: uuid.UUID, now: datetime
) -> list[uuid.UUID]:
    """No further steps, the wave's holds end, and messages not yet handed to a provider
    are withdrawn (their shoppers keep their notification budget and place). Then the
    compensation the SKU's rules ask for; returns its messages (none when off)."""
    return await sell_out_many(session, settings, [wave_id], now)


async def sell_out_many(
    session: AsyncSession, settings: Settings, wave_ids: Sequence[uuid.UUID], now: datetime
) -> list[uuid.UUID]:
    """:func:`sell_out` of several waves, one statement per step for them all (a catalogue
    sync that zeroes a thousand SKUs); only their compensations, when on, are per wave."""
    closed = await waves.close(session, wave_ids, now)
    await holds.end(session, wave_ids)
    withdrawn = await notifications.cancel_unsent_restock(session, wave_ids)
    await lifecycle.withdraw(session, withdrawn)
    planned: list[uuid.UUID] = []
    if not closed:
        return planned
    rules = await product_policy.effective_many(session, settings, sorted(set(closed.values())))
    for wave_id, sku in closed.items():
        mode = rules[sku].soldout_compensation
        if mode is not SoldoutCompensation.OFF:
            planned.extend(await _compensate(session, wave_id, sku, mode, now))
    return planned


async def _compensate(
    session: AsyncSession,
    wave_id: uuid.UUID,
    sku: str,
    mode: SoldoutCompensation,
    now: datetime,
) -> list[uuid.UUID]:
    """One "sold out again" message to each shopper still in the SKU's queue, in queue
    order, stating their place; with ``coupon``, an uploaded code each while any is left.
    Like a follow-up it neither counts against nor is refused by MAX_NOTIFICATIONS: it
    answers a message the shopper already had, or one the sell-out kept from them."""
    count = await queue_length(session, sku)
    planned = await notifications.plan_compensations(
        session, wave_id, sku, _whole_queue(sku), count, now
    )
    if mode is SoldoutCompensation.COUPON and planned:
        await _compensation_coupons(session, wave_id, sku, len(planned), now)
    log.info("soldout_compensation_planned", wave_id=str(wave_id), sku=sku, messages=len(planned))
    return [notification_id for notification_id, _ in planned]


async def _compensation_coupons(
    session: AsyncSession, wave_id: uuid.UUID, sku: str, count: int, now: datetime
) -> None:
    """A code from the pools for each of the wave's compensation messages whose shopper has
    no coupon yet. A follow-up that hands one of them a coupon and commits while this
    statement runs makes the shopper's one-coupon key refuse the whole statement; it is
    retried in a savepoint, whose new snapshot sees that coupon and passes the shopper by.
    The sell-out itself (and the stock event carrying it) never fails for a coupon: after
    the last attempt the messages go without."""
    messages = (
        select(
            Notification.id.label("notification_id"),
            Notification.subscription_id,
            Notification.channel,
        )
        .where(Notification.wave_id == wave_id, Notification.kind == Kind.COMPENSATION)
        .subquery("messages")
    )
    for attempt in range(1, COUPON_ATTEMPTS + 1):
        try:
            async with session.begin_nested():
                await coupons.issue_from_pools(session, sku, messages, count, now)
            return
        except IntegrityError:
            log.info("compensation_coupon_race", wave_id=str(wave_id), attempt=attempt)


def _whole_queue(sku: str) -> Subquery:
    """Every shopper in the SKU's queue (id, channel), numbered 1.. by place."""
    order = (Subscription.priority_rank, Subscription.created_at, Subscription.id)
    return (
        select(
            Subscription.id,
            Subscription.channel,
            func.row_number().over(order_by=order).label("n"),
        )
        .where(Subscription.sku == sku, Subscription.status.in_(IN_QUEUE))
        .subquery("queue")
    )


async def release_expired_holds(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Holds whose time is over release their units (restocks), and each open wave they
    belonged to has its next step due now, so the next shoppers are told at once instead
    of at the step interval. Returns those waves, for the caller to wake."""
    return await waves.make_due_now(session, await holds.release_expired(session, now), now)


# ------------------------------------------------------------------------------ the queue
async def queue_lengths(session: AsyncSession, skus: Sequence[str]) -> dict[str, int]:
    """:func:`queue_length` of each of ``skus``, in one grouped query."""
    rows = await session.execute(
        select(Subscription.sku, func.count())
        .where(db.one_of(session, Subscription.sku, skus), Subscription.status.in_(IN_QUEUE))
        .group_by(Subscription.sku)
    )
    return {sku: int(n) for sku, n in rows}


async def queue_length(session: AsyncSession, sku: str) -> int:
    """Shoppers in the SKU's queue (waiting, or notified and not yet converted)."""
    return (await queue_lengths(session, [sku])).get(sku, 0)


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


async def eligible_counts(
    session: AsyncSession, settings: Settings, waves_by_sku: dict[str, waves.WaveState]
) -> dict[str, int]:
    """Shoppers each SKU's wave may still tell (those its step picks from), in one grouped
    query: a shopper waits for one SKU, so a message of any of these waves to them is one
    of their SKU's wave."""
    told = exists().where(
        Notification.subscription_id == Subscription.id,
        db.one_of(session, Notification.wave_id, [wave.id for wave in waves_by_sku.values()]),
    )
    rows = await session.execute(
        select(Subscription.sku, func.count())
        .where(
            db.one_of(session, Subscription.sku, list(waves_by_sku)),
            Subscription.status.in_(IN_QUEUE),
            Subscription.notification_count < settings.waves.max_notifications,
            ~told,
        )
        .group_by(Subscription.sku)
    )
    return {sku: int(n) for sku, n in rows}


def _next_in_queue(
    settings: Settings, sku: str, wave_id: uuid.UUID, after: QueueKey | None, limit: int
) -> Subquery:
    """The next ``limit`` shoppers of the step, numbered 1.. in queue order. Keyset within a
    step (no rescans); NOT EXISTS across steps, so VIPs who subscribe mid-wave are first at
    the next step."""
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


# ------------------------------------------------------------------------------- the step
async def run(
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    wave_id: uuid.UUID,
    wake_senders: Callable[[list[uuid.UUID]], None],
    clock: Clock = SYSTEM_CLOCK,
) -> int:
    """Run every step of the wave that is due now; returns how many notifications it wrote.
    Each step's lines, and the messages it wakes, carry the id of the request that made the
    step due, from the wave's row: the sweeper's wake-up knows none."""
    written = 0
    with ops_logging.keeping_request_id():
        while True:
            async with db.transaction(sessions) as session:
                wave = await _begin_step(session, settings, wave_id, clock.now(), wake_senders)
                if wave is None:
                    return written
                queue_size = await queue_length(session, wave.sku)
            written += await _write_step(
                sessions, settings, wave_id, queue_size, wake_senders, clock
            )
            async with db.transaction(sessions) as session:
                await waves.release(session, wave_id)


async def _begin_step(
    session: AsyncSession,
    settings: Settings,
    wave_id: uuid.UUID,
    now: datetime,
    wake_senders: Callable[[list[uuid.UUID]], None],
) -> Wave | None:
    """Take the wave's lease; size a due step on the level of now (0: sold out)."""
    wave = await waves.take_lease(session, settings, wave_id, now)
    if wave is not None:
        ops_logging.serve_request(wave.request_id)
    if wave is None or not waves.step_due(wave, now):
        return wave
    level = await stock.current_level(session, wave.sku)
    if level == 0:
        compensations = await sell_out(session, settings, wave.id, now)
        if compensations:
            db.after_commit(session, lambda: wake_senders(compensations))
        return None
    rules = await product_policy.effective(session, settings, wave.sku)
    held = await holds.held(session, wave.sku, now)
    waves.begin_step(rules, wave, level, now, held)
    metrics.WAVE_STEPS.inc()
    log.info(
        "wave_step_begun",
        wave_id=str(wave.id),
        sku=wave.sku,
        step=wave.step,
        level=level,
        held=held,
        target=wave.target,
        planned=wave.planned,
    )
    return wave


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
    size = CHUNK
    while True:
        async with db.transaction(sessions) as session:
            ids, after = await _write_chunk(
                session, settings, wave_id, queue_size, after, clock.now(), size
            )
            if ids:
                db.after_commit(session, lambda ids=ids: wake_senders(ids))  # type: ignore[misc]
        if not ids:
            return written
        size = min(2 * size, LARGEST_CHUNK)
        written += len(ids)
        metrics.WAVE_MESSAGES_PLANNED.inc(len(ids))
        log.info(
            "wave_chunk_planned",
            wave_id=str(wave_id),
            notifications=len(ids),
            first_notification_id=str(ids[0]),
            last_notification_id=str(ids[-1]),
        )


async def _write_chunk(
    session: AsyncSession,
    settings: Settings,
    wave_id: uuid.UUID,
    queue_size: int,
    after: QueueKey | None,
    now: datetime,
    size: int,
) -> tuple[list[uuid.UUID], QueueKey | None]:
    wave = await waves.lock_for_chunk(session, settings, wave_id, now)
    if wave is None or wave.planned >= wave.target:
        return [], None
    limit = min(size, wave.target - wave.planned)
    picked = _next_in_queue(settings, wave.sku, wave_id, after, limit)
    rules = await product_policy.effective(session, settings, wave.sku)
    held_until = now + timedelta(seconds=rules.hold_seconds) if rules.hold_seconds > 0 else None
    written = await notifications.plan_restock_messages(
        session, wave_id, wave, queue_size, picked, limit, now, held_until
    )
    if not written:  # the queue is exhausted: this step is complete
        await waves.end_step(session, wave_id)
        return [], None
    if held_until is not None:
        await holds.record(session, [notification_id for notification_id, _ in written])
    last = await lifecycle.mark_notified(session, [sub_id for _, sub_id in written], now)
    await waves.count_planned(session, wave_id, len(written))
    return sorted(notification_id for notification_id, _ in written), last
