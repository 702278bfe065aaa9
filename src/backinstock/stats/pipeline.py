"""The delivery pipeline as the database shows it: the figures the API's /metrics serves
(so that one scrape sees the work of every worker host) and ``backinstock status`` prints.

Every figure is an index look-up or an index-only count, never a scan of the sent history
(revision 0014 adds what they need; ``bench/pipeline.py`` measures them on a million rows):

- notifications pending, sending and failed by channel: ``ix_notifications_work`` (status,
  next_attempt_at, channel), a partial index without the sent rows, read index-only;
- due and the oldest due: the same index;
- the last message sent: ``ix_notifications_sent_at``;
- a wave's first and last message and whether it still has open messages:
  ``ix_notifications_wave_progress`` (wave_id, status, sent_at);
- each location's last stock event: ``ix_restock_events_location_received``, skipping from
  one location to the next (a recursive query), so its cost grows with the locations, not
  with the events.

The API reads them at most every ``METRICS_CACHE_SECONDS`` (:class:`PipelineCache`); a
failed read keeps the last figures and is counted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.dispatch.models import OPEN_OR_FAILED, InDoubt, Notification, Status
from backinstock.dispatch.outcomes import in_doubt_counts
from backinstock.restocks.models import HELD, OPEN_WAVE, RestockEvent, StockHold, Wave

if TYPE_CHECKING:
    # The API passes its client in; `backinstock status` reads without one.
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

OPEN = (Status.PENDING.value, Status.SENDING.value, Status.INFLIGHT.value)
SHOWN_STATUSES = (Status.PENDING.value, Status.SENDING.value, Status.FAILED.value)
UNKNOWN_CHANNEL = "unknown"  # a follow-up: its contact is chosen when it is sent
CHANNELS = (*(c.value for c in Channel), UNKNOWN_CHANNEL)
# Waves whose first and last message are still to be seen, read per refresh at most.
TRACKED_WAVES = 200
# When an API process starts, the waves of this last period are timed (later ones as they
# open): a restart does not lose the latency of a wave in progress.
TIMED_SINCE = timedelta(hours=24)


# ------------------------------------------------------------------------------ figures
@dataclass(frozen=True)
class Figures:
    """One read of the pipeline, at ``now``."""

    now: datetime
    notifications: dict[tuple[str, str], int]  # (status, channel) -> rows
    due: int
    oldest_due_age: float  # seconds; 0 when nothing is due
    last_sent_age: float | None  # seconds; None until a message was sent
    open_waves: int
    units_held: int  # under a hold still running: not free for anyone but its shopper
    holds_overdue: int  # holds whose time is over, not yet released by a sweeper
    in_doubt: dict[tuple[str, str], int]  # (channel, resolution) -> messages
    locations: dict[str, float]  # location -> seconds since its last stock event
    location_count: int  # locations that sent events (up to the cap plus one)


async def read_figures(session: AsyncSession, settings: Settings, now: datetime) -> Figures:
    counts = {(status, channel): 0 for status in SHOWN_STATUSES for channel in CHANNELS}
    for status, channel, rows in await notification_counts(session):
        shown = Status.SENDING.value if status == Status.INFLIGHT.value else status
        counts[(shown, channel or UNKNOWN_CHANNEL)] += rows
    scalars = await scalar_figures(session, now)
    doubt = {(c.value, r.value): 0 for c in Channel for r in InDoubt}
    for channel, resolution, messages in await in_doubt_counts(session):
        doubt[(channel or UNKNOWN_CHANNEL, resolution)] = messages
    locations, location_count = await stock_event_ages(session, settings, now)
    return Figures(
        now=now,
        notifications=counts,
        due=scalars.due,
        oldest_due_age=_age(now, scalars.oldest_due),
        last_sent_age=None if scalars.last_sent is None else _age(now, scalars.last_sent),
        open_waves=scalars.open_waves,
        units_held=scalars.units_held,
        holds_overdue=scalars.holds_overdue,
        in_doubt=doubt,
        locations=locations,
        location_count=location_count,
    )


def _age(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


async def notification_counts(session: AsyncSession) -> list[tuple[str, str | None, int]]:
    """(status, channel, rows) of the open and failed notifications. The condition is the
    partial index's own text, so that both databases can tell the index covers it (a bound
    parameter would hide that from a generic plan)."""
    rows = await session.execute(
        select(Notification.status, Notification.channel, func.count())
        .select_from(Notification)
        .where(text(OPEN_OR_FAILED))
        .group_by(Notification.status, Notification.channel)
    )
    return [(status, channel, int(n)) for status, channel, n in rows]


@dataclass(frozen=True)
class ScalarFigures:
    due: int  # pending notifications due at the time of the read
    # Since when the oldest of them is due, or a claim whose lease lapsed is; None: none.
    oldest_due: datetime | None
    last_sent: datetime | None  # the last message sent, ever
    open_waves: int
    units_held: int
    holds_overdue: int


async def scalar_figures(session: AsyncSession, now: datetime) -> ScalarFigures:
    """The single-valued figures in one statement (one round trip, one snapshot), each an
    index look-up: due and the oldest due (``ix_notifications_work``), the last sent
    (``ix_notifications_sent_at``), the open waves and the running and overdue holds (their
    partial indexes)."""
    pending = Notification.status == Status.PENDING
    claimed = Notification.status.in_([Status.SENDING, Status.INFLIGHT])
    holding = select(func.count()).select_from(StockHold).where(text(HELD))
    row = (
        await session.execute(
            select(
                select(func.count())
                .where(pending, Notification.next_attempt_at <= now)
                .scalar_subquery(),
                select(func.min(Notification.next_attempt_at)).where(pending).scalar_subquery(),
                # Claimed by a worker whose lease lapsed (it died) and not yet handed back:
                # due again since the lease ended, or a wave whose every message was claimed
                # when its workers died would never show as waiting.
                select(func.min(Notification.lease_until))
                .where(claimed, Notification.lease_until <= now)
                .scalar_subquery(),
                select(func.max(Notification.sent_at)).scalar_subquery(),
                select(func.count()).select_from(Wave).where(text(OPEN_WAVE)).scalar_subquery(),
                holding.where(StockHold.until > now).scalar_subquery(),
                holding.where(StockHold.until <= now).scalar_subquery(),
            )
        )
    ).one()
    due, oldest, lapsed, last_sent, open_waves, held, overdue = row
    if oldest is not None and oldest > now:
        oldest = None  # the earliest is not due yet (a retry's backoff, quiet hours)
    oldest = min((t for t in (oldest, lapsed) if t is not None), default=None)
    return ScalarFigures(
        int(due or 0), oldest, last_sent, int(open_waves or 0), int(held or 0), int(overdue or 0)
    )


async def stock_event_ages(
    session: AsyncSession, settings: Settings, now: datetime
) -> tuple[dict[str, float], int]:
    """Seconds since each shown location's last stock event, and how many locations there
    are (counted up to the cap plus one): ``METRICS_LOCATIONS`` if set, else the first
    ``METRICS_MAX_LOCATIONS`` by name."""
    chosen = settings.metrics.metrics_locations
    if chosen:
        last = func.max(RestockEvent.received_at)
        rows = await session.execute(
            select(RestockEvent.location, last)
            .where(RestockEvent.location.in_(chosen))
            .group_by(RestockEvent.location)
        )
        seen = {location: _age(now, at) for location, at in rows}
        return seen, len(seen)
    cap = settings.metrics.metrics_max_locations
    found = [(row[0], row[1]) for row in await session.execute(_locations_query(cap + 1))]
    return {location: _age(now, at) for location, at in found[:cap]}, len(found)


def _locations_query(limit: int) -> Any:
    """The first ``limit`` locations by name with their last event: a skip scan, one
    index probe per location (``WITH RECURSIVE``, on both databases)."""
    events = RestockEvent
    first = select(func.min(events.location).label("location"), literal(1).label("n"))
    found = first.cte("locations", recursive=True)
    after = (
        select(func.min(events.location))
        .where(events.location > found.c.location)
        .scalar_subquery()
    )
    found = found.union_all(
        select(after, found.c.n + 1).where(found.c.location.is_not(None), found.c.n < limit)
    )
    last = (
        select(func.max(events.received_at))
        .where(events.location == found.c.location)
        .scalar_subquery()
    )
    return select(found.c.location, last).where(found.c.location.is_not(None))


# --------------------------------------------------------------------------- wave timing
@dataclass(frozen=True)
class WaveProgress:
    wave_id: uuid.UUID
    open: bool  # some of its messages are pending or being sent
    first_sent: datetime | None
    last_sent: datetime | None


async def wave_progress(session: AsyncSession, wave_id: uuid.UUID) -> WaveProgress:
    """Probes of ``ix_notifications_wave_progress``, one index entry each: is a message of
    the wave still open (one probe per open status, in the index's own order: an EXISTS
    over all three, or a LIMIT without that order, gets a generic plan from PostgreSQL,
    after a prepared statement's first runs, that scans the table expecting an early
    match, and reads all of it for a wave with none), and its first and last message
    sent."""
    of_wave = Notification.wave_id == wave_id
    still_open = False
    for status in OPEN:
        probe = (
            select(Notification.wave_id)
            .where(of_wave, Notification.status == status)
            .order_by(Notification.wave_id, Notification.status, Notification.sent_at)
            .limit(1)
        )
        if await session.scalar(probe) is not None:
            still_open = True
            break
    sent = (of_wave, Notification.status == Status.SENT)
    first = await session.scalar(select(func.min(Notification.sent_at)).where(*sent))
    last = await session.scalar(select(func.max(Notification.sent_at)).where(*sent))
    return WaveProgress(wave_id, still_open, first, last)


@dataclass
class _Tracked:
    opened_at: datetime
    first_seen: bool = False


@dataclass
class WaveTimer:
    """Times each wave once, from its restock (``opened_at``) to its first message sent and
    to its last, once everything it had planned is settled. In memory, per API process:
    the waves opened since the last read are found by id (UUIDv7, time-ordered), and each
    is probed until it is timed (a few index probes per wave in progress)."""

    first: Histogram
    last: Histogram
    tracked: dict[uuid.UUID, _Tracked] = field(default_factory=dict)
    newest: uuid.UUID | None = None

    async def advance(self, session: AsyncSession, now: datetime) -> None:
        await self._discover(session, now)
        waves = list(self.tracked)[:TRACKED_WAVES]
        if not waves:
            return
        rows = await session.execute(
            select(Wave.id, Wave.step, Wave.planned, Wave.target).where(Wave.id.in_(waves))
        )
        for wave_id, step, planned, target in rows:
            progress = await wave_progress(session, wave_id)
            self._observe(progress, written=step >= 1 and planned >= target)

    async def _discover(self, session: AsyncSession, now: datetime) -> None:
        query = select(Wave.id, Wave.opened_at).order_by(Wave.id).limit(1000)
        if self.newest is None:
            query = query.where(Wave.opened_at >= now - TIMED_SINCE)
        else:
            query = query.where(Wave.id > self.newest)
        for wave_id, opened_at in await session.execute(query):
            self.tracked[wave_id] = _Tracked(opened_at)
            self.newest = wave_id
        if self.newest is None:  # no wave yet: from now on, any new one
            self.newest = uuid.UUID(int=0)

    def _observe(self, progress: WaveProgress, written: bool) -> None:
        tracked = self.tracked[progress.wave_id]
        if not tracked.first_seen and progress.first_sent is not None:
            tracked.first_seen = True
            self.first.observe(_age(progress.first_sent, tracked.opened_at))
        if written and not progress.open:
            if progress.last_sent is not None:
                self.last.observe(_age(progress.last_sent, tracked.opened_at))
            del self.tracked[progress.wave_id]


# -------------------------------------------------------------------- the /metrics side
class PipelineCollector(Collector):
    """The figures of the last read, as Prometheus metrics. Registered by the API only
    (``ops/router.py``): a worker process never serves them."""

    def __init__(self) -> None:
        self.figures: Figures | None = None
        self.redis_up: bool | None = None
        self.refresh_seconds = 0.0
        self.refresh_failures = 0
        self.first_message = Histogram(
            "backinstock_restock_first_message_seconds",
            "From a restock opening a wave to the wave's first message sent",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=None,
        )
        self.last_message = Histogram(
            "backinstock_restock_last_message_seconds",
            "From a restock opening a wave to the last message it had planned, once all "
            "of them are settled (sent, failed or cancelled)",
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
            registry=None,
        )

    def collect(self) -> Iterator[Metric]:
        yield from self.first_message.collect()
        yield from self.last_message.collect()
        yield _gauge(
            "backinstock_pipeline_refresh_seconds",
            "How long the last read of the pipeline figures from the database took",
            self.refresh_seconds,
        )
        failures = CounterMetricFamily(
            "backinstock_pipeline_refresh_failures",
            "Reads of the pipeline figures that failed (the last figures are kept)",
        )
        failures.add_metric([], self.refresh_failures)
        yield failures
        if self.redis_up is not None:
            yield _gauge(
                "backinstock_redis_up",
                "1 when Redis (the broker) answered this API process's PING at the last "
                "read, else 0; absent in the embedded mode, which has no Redis",
                1.0 if self.redis_up else 0.0,
            )
        if self.figures is not None:
            yield from _figures(self.figures)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families vary with the figures: collected, not described


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _figures(f: Figures) -> Iterator[Metric]:
    by_status = GaugeMetricFamily(
        "backinstock_notifications",
        "Notifications by status (pending: waiting for their time or a worker; sending: "
        "claimed by a worker; failed: given up, all time) and channel (unknown: a follow-up, "
        "whose contact is chosen when it is sent)",
        labels=["status", "channel"],
    )
    for (status, channel), rows in sorted(f.notifications.items()):
        by_status.add_metric([status, channel], rows)
    yield by_status
    yield _gauge(
        "backinstock_notifications_due",
        "Pending notifications whose time has come, not yet claimed by a worker",
        f.due,
    )
    yield _gauge(
        "backinstock_oldest_due_notification_age_seconds",
        "How long the oldest due notification has waited for a worker, a claim whose lease "
        "lapsed counted from its end (0: none is due)",
        f.oldest_due_age,
    )
    if f.last_sent_age is not None:
        yield _gauge(
            "backinstock_last_message_sent_age_seconds",
            "Seconds since any worker last recorded a message as sent",
            f.last_sent_age,
        )
    yield _gauge(
        "backinstock_waves_open", "Waves open (restocked SKUs not sold out again)", f.open_waves
    )
    yield _gauge(
        "backinstock_units_held",
        "Units held for shoppers a wave told (HOLD_SECONDS), not expired: free for nobody else",
        f.units_held,
    )
    yield _gauge(
        "backinstock_holds_overdue",
        "Holds whose time is over that no sweeper has released yet (their units wait, and "
        "so does their wave's next step): above 0 for long, the workers are not sweeping",
        f.holds_overdue,
    )
    doubt = GaugeMetricFamily(
        "backinstock_in_doubt_messages",
        "Messages a crash left in flight, by channel and how each was settled "
        "(unresolved, found, callback, resent, dropped); read from the database",
        labels=["channel", "resolution"],
    )
    for (channel, resolution), messages in sorted(f.in_doubt.items()):
        doubt.add_metric([channel, resolution], messages)
    yield doubt
    ages = GaugeMetricFamily(
        "backinstock_stock_event_age_seconds",
        "Seconds since each location's last stock event (a silent feed grows); "
        "BACKINSTOCK_METRICS_LOCATIONS, else the first METRICS_MAX_LOCATIONS by name",
        labels=["location"],
    )
    for location, age in sorted(f.locations.items()):
        ages.add_metric([location], age)
    yield ages
    yield _gauge(
        "backinstock_stock_locations",
        "Locations that sent stock events (counted up to METRICS_MAX_LOCATIONS plus one)",
        f.location_count,
    )


_collector: PipelineCollector | None = None


def collector() -> PipelineCollector:
    """The process's collector, made on first use: by the API only. (Its histograms are
    metric objects: made in a worker process running in multiprocess mode, they would
    write files that the worker's endpoint serves.)"""
    global _collector
    if _collector is None:
        _collector = PipelineCollector()
    return _collector


@dataclass
class PipelineCache:
    """Reads the figures at most every ``METRICS_CACHE_SECONDS`` (by the process's clock);
    scrapes meanwhile, and scrapes that arrive during a read, share it."""

    read_at: datetime | None = None
    timer: WaveTimer | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        redis: Redis | None,
        now: datetime,
    ) -> None:
        fresh_for = timedelta(seconds=settings.metrics.metrics_cache_seconds)
        figures_of = collector()
        async with self._lock:
            if self.read_at is not None and now - self.read_at < fresh_for:
                return
            started = time.perf_counter()
            try:
                async with sessions() as session:
                    figures = await read_figures(session, settings, now)
                    await self._timer().advance(session, now)
            except Exception as exc:  # the database is down: /readyz says so
                figures_of.refresh_failures += 1
                log.warning("pipeline_figures_failed", error_type=type(exc).__name__)
                return
            finally:
                figures_of.refresh_seconds = time.perf_counter() - started
            figures_of.figures = figures
            figures_of.redis_up = None if redis is None else await _pongs(redis)
            self.read_at = now

    def _timer(self) -> WaveTimer:
        if self.timer is None:
            self.timer = WaveTimer(collector().first_message, collector().last_message)
        return self.timer


async def _pongs(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:
        return False


# ------------------------------------------------------------------ backinstock status
@dataclass(frozen=True)
class OpenWave:
    wave_id: uuid.UUID
    sku: str
    opened_at: datetime
    step: int
    level: int
    target: int  # shoppers the wave means to have told by the end of its current step
    told: int  # messages sent
    pending: int  # waiting for a worker, a retry or quiet hours to end
    held: int  # of pending: held back by the shopper's quiet hours
    sending: int
    failed: int
    cancelled: int


async def open_waves(session: AsyncSession, now: datetime, limit: int = 50) -> list[OpenWave]:
    """The open waves, oldest first, with their messages counted by state."""
    waves = list(
        await session.execute(
            select(Wave.id, Wave.sku, Wave.opened_at, Wave.step, Wave.level, Wave.target)
            .where(text(OPEN_WAVE))
            .order_by(Wave.opened_at)
            .limit(limit)
        )
    )
    if not waves:
        return []
    held = (Notification.error == "quiet_hours") & (Notification.next_attempt_at > now)
    rows = await session.execute(
        select(Notification.wave_id, Notification.status, held, func.count())
        .where(Notification.wave_id.in_([w.id for w in waves]))
        .group_by(Notification.wave_id, Notification.status, held)
    )
    counts: dict[uuid.UUID, dict[str, int]] = {w.id: {} for w in waves}
    for wave_id, status, is_held, n in rows:
        if wave_id is None:  # the IN above leaves none; the column allows it (confirmations)
            continue
        state = "held" if status == Status.PENDING and is_held else status
        state = Status.SENDING.value if state == Status.INFLIGHT.value else state
        counts[wave_id][state] = counts[wave_id].get(state, 0) + int(n)
    result = []
    for w in waves:
        c = counts[w.id]
        result.append(
            OpenWave(
                w.id,
                w.sku,
                w.opened_at,
                w.step,
                w.level,
                w.target,
                told=c.get(Status.SENT.value, 0),
                pending=c.get(Status.PENDING.value, 0) + c.get("held", 0),
                held=c.get("held", 0),
                sending=c.get(Status.SENDING.value, 0),
                failed=c.get(Status.FAILED.value, 0),
                cancelled=c.get(Status.CANCELLED.value, 0),
            )
        )
    return result
