"""The journal of one claimed batch: provider calls recorded as they start and as they end.

The unit of recording is the unit of loss. A batch recorded only when it is done loses all
of it to a crash; a journal row per call costs a transaction per message. The journal
commits in groups instead: every call that is about to start waits for the next group
commit (which marks it in flight: ``call_started_at``), and results ride along with that
commit, or go on their own after ``flush_after`` seconds or ``flush_results`` results,
whichever is first.

So at any instant the database shows a claimed message as one of: ``sending`` (its call
has not started: after a crash it is simply sent), in flight (``sending`` with
``call_started_at`` set: its call may have reached the provider; after a crash it is in
doubt), or its outcome. The in-flight set is at most
the sender's concurrency plus the results of one group not yet committed.

A commit costs a WAL flush (milliseconds on a busy disk), and a call that waits for one
before it starts pays it in full. So a start may mark ahead: with ``lookahead`` N, the
commit that marks a call also marks the next N messages of the claim on that channel, which
then start without waiting. A claim's first N are marked by the claim's own transaction
(:func:`first_marks`), so that no claim's first call waits for a commit either. After a
crash those N may be in doubt although they never left (a worker process's claims each
have up to N of them);
their channel's policy settles them as it would a real doubt (SMS: looked up, absent, sent;
email and WeChat: sent), so nobody is lost or told twice. A channel whose policy is
``drop`` never marks ahead: a message dropped there must have really been in flight; nor
does a sender that records no starts (the dev outbox: ``Sender.marks_starts``).

A worker process works several claims at once (one per Dramatiq thread), and each group
commit costs a transaction on both sides, so the journals of one process share one
:class:`GroupCommit`: a transaction carries every journal's starts, marks and results.
Should it fail, each journal's part is retried alone, so that a part that cannot be
written (a bad value) fails alone.

On SIGTERM (``stopping``) no further call starts; what never started, marked ahead or not,
is handed back to the queue by :meth:`Journal.close`.

Nor does a call start once the claim's lease, as last committed, is within a third of its
end (:data:`LEASE_MARGIN`). The sweeper hands a lapsed claim's messages to other workers,
and settles the ones in flight by policy (email and WeChat: sent again); a database too
slow to commit the renewal in time must not let this worker start, after that, a message
it had marked ahead. The claim then winds down as on SIGTERM. The margin leaves a call that
starts just before it that much time to end before anyone can take its message over, and
covers clocks that disagree by less than that between worker hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import db
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.dispatch import outcomes
from backinstock.dispatch.outcomes import Delivery, Recorded, Send
from backinstock.ops import metrics
from backinstock.senders.base import OutgoingMessage, SendResult

log = structlog.get_logger(__name__)

FLUSH_AFTER_SECONDS = 0.25  # the defaults of RECORD_AFTER_SECONDS and RECORD_RESULTS
FLUSH_RESULTS = 64
# A database that cannot take the results even after this many tries leaves the calls
# in flight; the sweeper then settles them as in doubt (nothing is lost, see outcomes).
CLOSE_TRIES = 5
# The part of the lease, counted back from its end as last committed, in which no call
# starts. The claim is renewed every third of its lease: in steady state its committed end
# lies between two thirds and the whole lease ahead, so only a commit later than a third of
# the lease stops a claim.
LEASE_MARGIN = 1 / 3


@dataclass
class _Group:
    """One journal's part of a group commit."""

    starts: list[tuple[OutgoingMessage, asyncio.Future[bool]]]
    wanted: list[OutgoingMessage]  # to mark in flight: the starts, then the marks ahead
    results: list[SendResult]
    renew_until: datetime | None
    allowed: set[uuid.UUID] = field(default_factory=set)
    over: asyncio.Event = field(default_factory=asyncio.Event)  # committed, or failed
    recorded: list[Recorded] = field(default_factory=list)  # counted once committed


class GroupCommit:
    """The group commit of one worker process: one transaction for every journal's work."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        flush_after: float = FLUSH_AFTER_SECONDS,
        flush_results: int = FLUSH_RESULTS,
    ) -> None:
        self._sessions = sessions
        self.flush_after = flush_after
        self.flush_results = flush_results
        self._journals: dict[Journal, None] = {}  # attached, in order
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self, journal: Journal) -> None:
        self._journals[journal] = None

    def wake(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._journals:
            self._let_go_of_drained()
            await self._due()
            # Let the tasks that are ready run first: the calls answered by the last commit
            # queue their next starts and results, and go along with this one (without it,
            # two claims take turns, a commit each).
            await asyncio.sleep(0)
            due = [j for j in self._journals if j.has_work()]
            if due:
                await self._commit(due)
            else:
                self._let_go_of_drained()

    def _let_go_of_drained(self) -> None:
        for journal in [j for j in self._journals if j.drained()]:
            del self._journals[journal]
            journal.let_go()

    async def _due(self) -> None:
        """Return when a group should commit: some journal has a call waiting to start,
        marks to make, a renewal, enough results or is closing, or the oldest queued
        result has waited ``flush_after``."""
        while self._journals and not any(j.urgent() for j in self._journals):
            self._wake.clear()
            oldest = min(
                (j.results_since for j in self._journals if j.results_since is not None),
                default=None,
            )
            if oldest is None:
                await self._wake.wait()
                continue
            timeout = oldest + self.flush_after - time.monotonic()
            if timeout <= 0:
                return
            # A timer, not asyncio.wait_for (a task per wait, and this runs per result).
            timer = asyncio.get_running_loop().call_later(timeout, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def _commit(self, due: list[Journal]) -> None:
        parts = [(journal, journal.take()) for journal in due]
        try:
            await self._write(parts)
        except Exception as exc:
            log.warning("journal_flush_failed", error_type=type(exc).__name__)
            if len(parts) == 1:
                await self._failed(parts)
                return
            for part in parts:  # each alone: one part that cannot be written fails alone
                try:
                    await self._write([part])
                except Exception as alone:
                    log.warning("journal_flush_failed", error_type=type(alone).__name__)
                    await self._failed([part])
                else:
                    part[0].settle(part[1])
            return
        for journal, group in parts:
            journal.settle(group)

    async def _write(self, parts: list[tuple[Journal, _Group]]) -> None:
        async with db.hot_transaction(self._sessions) as session:
            for journal, group in parts:
                group.allowed = await journal.write(session, group)

    async def _failed(self, parts: list[tuple[Journal, _Group]]) -> None:
        failures = 0
        for journal, group in parts:
            failures = max(failures, journal.fail(group))
        if not any(journal.closing for journal, _ in parts):
            await asyncio.sleep(min(1.0, 0.05 * 2**failures))


class Journal:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        claim_id: uuid.UUID,
        deliveries: list[Delivery],
        stopping: asyncio.Event | None = None,
        *,
        lookahead: Mapping[str, int] | None = None,
        group_commit: GroupCommit | None = None,
        clock: Clock = SYSTEM_CLOCK,
        marked_with_claim: set[uuid.UUID] | None = None,
        lease: tuple[datetime, timedelta] | None = None,
    ) -> None:
        """``marked_with_claim``: the ids of :func:`first_marks` that the claim's own
        transaction marked in flight (their calls start without waiting for a commit).
        ``lease``: the claim's lease as its transaction committed it (its end, and its
        length): no call starts once the end is within ``LEASE_MARGIN`` of the length."""
        self._sessions = sessions
        self._clock = clock  # when calls start and end, as recorded
        self._claim_id = claim_id
        # Only the messages to send: the journal records provider calls, nothing else.
        self._deliveries = {d.notification_id: d for d in deliveries if isinstance(d, Send)}
        self._lookahead = lookahead or {}
        self._queues = _channel_queues(deliveries)
        self._next_ahead: dict[str, int] = {}  # per channel: first message not yet asked
        self._stopping = stopping or asyncio.Event()
        self._commit = group_commit or GroupCommit(sessions)
        self._commit.attach(self)
        self._starts: list[tuple[OutgoingMessage, asyncio.Future[bool]]] = []
        self._results: list[SendResult] = []
        self.results_since: float | None = None  # when the oldest queued result came back
        self._ahead: list[OutgoingMessage] = []  # to be marked with the next commit
        self._ahead_due = False  # ... which must come now: a sender is running low
        # Marks being committed: a call that reaches one waits for that commit.
        self._in_commit: dict[uuid.UUID, asyncio.Event] = {}
        # Per channel: marked ahead (or about to be) and not started; at most ``lookahead``.
        self._unstarted_marks: dict[str, set[uuid.UUID]] = {}
        self._marked: set[uuid.UUID] = set()  # in flight in the database, allowed to start
        self._take_claim_marks(marked_with_claim)
        self._started: set[uuid.UUID] = set()  # may have reached the provider
        self._calling: Counter[str] = Counter()  # per channel: calls under way now
        self._recorded: set[uuid.UUID] = set()
        self._renew_until: datetime | None = None
        self._lease_until: datetime | None = lease[0] if lease is not None else None
        self._lease_margin = lease[1] * LEASE_MARGIN if lease is not None else timedelta(0)
        self._lease_running_out = False
        self.closing = False
        self._failures = 0
        self.released = asyncio.Event()  # the group commit has nothing more of this journal
        # Bound once per claim, not looked up again by every line (the lazy logger rebuilds
        # itself per call); one line per provider answer only when INFO lines are written.
        self._log = log.bind()
        self._logs_answers = _logs_at_info(self._log)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _lease_holds(self) -> bool:
        """Whether a call may still start under the claim's lease. Once the lease is too
        near its end it stays so: a renewal committed later would find messages the sweeper
        had already handed to another worker still marked ahead here."""
        if self._lease_running_out:
            return False
        if self._lease_until is None or self._clock.now() < self._lease_until - self._lease_margin:
            return True
        self._lease_running_out = True
        metrics.CLAIMS_CUT_SHORT.inc()
        self._log.warning(
            "claim_lease_running_out",
            claim_id=str(self._claim_id),
            lease_until=self._lease_until.isoformat(),
        )
        return False

    def _may_start(self) -> bool:
        return not (self.stopping or self.closing) and self._lease_holds()

    def _take_claim_marks(self, marked: set[uuid.UUID] | None) -> None:
        """Count the claim's own marks as marked ahead: each channel's first messages."""
        if not marked:
            return
        for channel, queue in self._queues.items():
            first = queue[: self._lookahead.get(channel, 0)]
            self._next_ahead[channel] = len(first)
            ids = {m.notification_id for m in first} & marked
            self._unstarted_marks[channel] = ids
            self._marked |= ids

    # ------------------------------------------------------------------ the senders' side
    async def call(
        self, message: OutgoingMessage, send: Callable[[], Awaitable[SendResult]]
    ) -> SendResult | None:
        if not await self._start(message):
            return None
        started = time.perf_counter()
        self._calling[message.channel] += 1
        try:
            result = await send()  # cancelled here: the row stays in flight, in doubt
        finally:
            self._calling[message.channel] -= 1
        _call_seconds(message.channel).observe(time.perf_counter() - started)
        self.record([result])
        return result

    async def call_idempotent(
        self,
        messages: list[OutgoingMessage],
        send: Callable[[list[OutgoingMessage]], Awaitable[list[SendResult]]],
    ) -> list[SendResult]:
        if self.stopping:
            return []
        self._started.update(m.notification_id for m in messages)
        results = await send(messages)
        self.record(results)
        return results

    # ---------------------------------------------------------------- the dispatcher's side
    def record(self, results: list[SendResult]) -> None:
        """Queue outcomes for the next group commit (each recorded once)."""
        fresh = [r for r in results if r.notification_id not in self._recorded]
        if not fresh:
            return
        self._recorded.update(r.notification_id for r in fresh)
        self._log_answers(fresh)
        first = not self._results
        if first:
            self.results_since = time.monotonic()
        self._results += fresh
        # The first result arms the group commit's timer; later ones only matter once
        # there are enough of them to commit at once.
        if first or len(self._results) >= self._commit.flush_results:
            self._commit.wake()

    def renew(self, until: datetime) -> None:
        """Extend the claim's lease with the next group commit. Renewals go through the
        journal so that one claim's rows are only ever written by one transaction at a time
        (two would deadlock on the rows they both lock)."""
        self._renew_until = until
        self._commit.wake()

    async def close(self) -> None:
        """Commit what is queued, then hand back every claimed message that never started."""
        self.closing = True
        self._commit.wake()
        await self.released.wait()
        for _, waiting in self._starts:  # nothing may start once closing
            waiting.set_result(False)
        self._starts = []
        unstarted = [
            d.notification_id
            for d in self._deliveries.values()
            if d.notification_id not in self._started
        ]
        if not unstarted:
            return
        try:
            async with db.transaction(self._sessions) as session:
                await outcomes.release(session, self._claim_id, unstarted, self._clock.now())
        except Exception as exc:  # the lease lapses instead, and the sweeper hands them back
            log.warning("journal_release_failed", error_type=type(exc).__name__)

    # ----------------------------------------------------------- the group commit's side
    def has_work(self) -> bool:
        return bool(self._starts or self._ahead or self._results or self._renew_until)

    def urgent(self) -> bool:
        return bool(
            self._starts
            or (self._ahead and self._ahead_due)
            or self._renew_until
            or len(self._results) >= self._commit.flush_results
            or (self.closing and (self.drained() or self.has_work()))
        )

    def drained(self) -> bool:
        """Closing, with nothing left to commit (or nothing that will ever commit)."""
        return self.closing and (self._failures >= CLOSE_TRIES or not self.has_work())

    def let_go(self) -> None:
        if self._results:
            log.warning("journal_results_unrecorded", messages=len(self._results))
        self.released.set()

    def take(self) -> _Group:
        starts, self._starts = self._starts, []
        ahead, self._ahead = self._ahead, []
        self._ahead_due = False
        results, self._results = self._results, []
        self.results_since = None
        renew_until, self._renew_until = self._renew_until, None
        # A deploy (or a lease near its end) stops new calls at once, even those already
        # queued to start.
        wanted = [] if self.stopping or not self._lease_holds() else [m for m, _ in starts] + ahead
        unmarked = {m.notification_id: m for m in wanted if m.notification_id not in self._marked}
        group = _Group(starts, list(unmarked.values()), results, renew_until)
        for notification_id in unmarked:
            self._in_commit[notification_id] = group.over
        return group

    async def write(self, session: AsyncSession, group: _Group) -> set[uuid.UUID]:
        allowed: set[uuid.UUID] = set()
        if group.renew_until is not None:
            await outcomes.renew(session, self._claim_id, group.renew_until)
        if group.wanted:
            allowed = await outcomes.mark_inflight(
                session,
                self._claim_id,
                [(m, self._rank(m)) for m in group.wanted],
                self._clock.now(),
            )
        if group.results:
            group.recorded = await outcomes.record_results(
                session, self._claim_id, self._deliveries, group.results, self._clock.now()
            )
        return allowed

    def settle(self, group: _Group) -> None:
        self._failures = 0
        if group.renew_until is not None and self._lease_until is not None:
            self._lease_until = max(self._lease_until, group.renew_until)
        count_recorded(group.recorded)
        self._marked.update(group.allowed)
        self._forget_unmarked(group)
        self._answer(group.starts)
        self._over(group)

    def fail(self, group: _Group) -> int:
        """Nothing of the group started; its results are retried. Returns the failures in
        a row."""
        self._failures += 1
        if group.results:
            if not self._results:
                self.results_since = time.monotonic()
            self._results = group.results + self._results
        self._forget_unmarked(group)
        self._answer(group.starts)
        self._over(group)
        return self._failures

    def _over(self, group: _Group) -> None:
        for message in group.wanted:
            self._in_commit.pop(message.notification_id, None)
        group.over.set()

    def _forget_unmarked(self, group: _Group) -> None:
        """Messages asked to be marked ahead that were not (the claim lost them, or the
        commit failed) no longer count against the lookahead."""
        for message in group.wanted:
            if message.notification_id not in self._marked:
                self._unstarted_marks.get(message.channel, set()).discard(message.notification_id)

    def _answer(self, starts: list[tuple[OutgoingMessage, asyncio.Future[bool]]]) -> None:
        for message, waiting in starts:
            marked = message.notification_id in self._marked
            go = marked and not self.stopping and self._lease_holds()
            with contextlib.suppress(asyncio.InvalidStateError):  # its sender gave up waiting
                waiting.set_result(go)

    # -------------------------------------------------------------------------- internals
    async def _start(self, message: OutgoingMessage) -> bool:
        if not self._may_start():
            return False
        marking = self._in_commit.get(message.notification_id)
        if marking is not None:  # its mark is being committed: wait for that commit, not
            await marking.wait()  # for one of its own
            if not self._may_start():
                return False
        if message.notification_id in self._marked:  # marked ahead: no commit to wait for
            self._started.add(message.notification_id)
            self._unstarted_marks.setdefault(message.channel, set()).discard(
                message.notification_id
            )
            self._top_up(message.channel)
            return True
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starts.append((message, waiting))
        self._ahead += self._look_ahead(message.channel, message)
        self._commit.wake()
        if not await waiting:
            return False
        self._started.add(message.notification_id)
        return True

    def _top_up(self, channel: str) -> None:
        """Mark the channel's next messages before the sender runs out of marked ones: each
        start asks for the next message's mark, by a group commit the sender does not wait
        for. Where providers answer at once, a sender that waited for each commit would be
        held to the database's commit rate.

        That commit need not come at once: the marks ride along with the next one (another
        claim's, or this claim's results), and force one only when few are left
        (:func:`low_water`). The window stays full: on a busy event loop a commit takes tens of
        milliseconds, and marks asked half a window at a time (the earlier design) arrived
        after the senders had reached them, so calls waited for the commit carrying their
        own mark."""
        if not self._may_start():
            return
        lookahead = self._lookahead.get(channel, 0)
        if self._room(channel) > 0:
            self._ahead += self._look_ahead(channel)
        if (
            self._ahead
            and not self._ahead_due
            and self._marks_left(channel) <= low_water(lookahead, self._calling[channel])
        ):
            self._ahead_due = True
            self._commit.wake()

    def _marks_left(self, channel: str) -> int:
        """The channel's messages marked in the database that have not started."""
        queued = sum(1 for m in self._ahead if m.channel == channel)
        return len(self._unstarted_marks.get(channel, ())) - queued

    def _room(self, channel: str) -> int:
        """How many more of the channel's messages may be marked without having started."""
        return self._lookahead.get(channel, 0) - len(self._unstarted_marks.get(channel, ()))

    def _look_ahead(
        self, channel: str, starting: OutgoingMessage | None = None
    ) -> list[OutgoingMessage]:
        """The channel's next messages to mark (along with ``starting``, when a call waits
        to start): enough that at most ``lookahead`` are marked without having started."""
        queue = self._queues.get(channel, [])
        start = self._next_ahead.get(channel, 0)
        room = self._room(channel)
        ahead: list[OutgoingMessage] = []
        while start < len(queue) and len(ahead) < room:
            candidate = queue[start]
            start += 1
            if starting is None or candidate.notification_id != starting.notification_id:
                ahead.append(candidate)
        self._next_ahead[channel] = start
        self._unstarted_marks.setdefault(channel, set()).update(m.notification_id for m in ahead)
        return ahead

    def _rank(self, message: OutgoingMessage) -> int:
        return self._deliveries[message.notification_id].contact.rank

    def _log_answers(self, results: list[SendResult]) -> None:
        """One line per provider answer (a batch's for the dev outbox), naming the
        notification and its wave: with the request id bound by the worker (see
        worker.LogContext), one restock is followed from webhook to provider with grep."""
        if not self._logs_answers:
            return
        for result in results:
            delivery = self._deliveries.get(result.notification_id)
            self._log.info(
                "provider_answered",
                notification_id=str(result.notification_id),
                wave_id=str(delivery.wave_id) if delivery and delivery.wave_id else None,
                channel=delivery.contact.channel if delivery else None,
                outcome=result.outcome.value,
                provider_id=result.provider_id,
                error=result.error,
                already_sent=result.already_sent or None,
            )


def _channel_queues(deliveries: list[Delivery]) -> dict[str, list[OutgoingMessage]]:
    """Each channel's messages in claim order: the order its sender starts them in."""
    queues: dict[str, list[OutgoingMessage]] = {}
    for d in deliveries:
        if isinstance(d, Send):
            queues.setdefault(d.message.channel, []).append(d.message)
    return queues


def first_marks(
    deliveries: list[Delivery], lookahead: Mapping[str, int]
) -> list[tuple[OutgoingMessage, int]]:
    """The messages a claim marks in flight in its own transaction (with their contact
    ranks): each channel's first ``lookahead``, as if marked ahead by a first call. A
    claim's first calls then start at once instead of each claim paying a commit before
    its first call; after a crash they are settled as any message marked ahead."""
    taken: Counter[str] = Counter()
    firsts: list[tuple[OutgoingMessage, int]] = []
    for d in deliveries:
        if isinstance(d, Send) and taken[d.message.channel] < lookahead.get(d.message.channel, 0):
            taken[d.message.channel] += 1
            firsts.append((d.message, d.contact.rank))
    return firsts


def low_water(lookahead: int, calling: int) -> int:
    """How few marks left ahead of a sender force a commit for more: enough for the calls
    under way to start twice over while that commit is made, at least a quarter of the
    window and at most half. A sender with few connections (email: ``SMTP_CONNECTIONS``)
    then asks for more marks per commit, so a claim costs fewer commits; one with many
    (Twilio and WeChat: 20) asks at half the window, as its calls start faster than a
    commit is made on a busy event loop."""
    return min(lookahead // 2, max(lookahead // 4, 2 * calling))


def count_recorded(recorded: list[Recorded]) -> None:
    """Count what a committed group of results came to: each counter once per group, by
    how many (a group is up to a few hundred results of one or two kinds)."""
    for (channel, event), times in Counter((r.channel, r.event) for r in recorded).items():
        if event in ("sent", "transient", "permanent"):
            metrics.MESSAGES.labels(channel=channel, outcome=event).inc(times)
        elif event == "retry":
            metrics.RETRIES.labels(channel=channel).inc(times)
        elif event == "retries_exhausted":
            metrics.GAVE_UP.labels(reason=event).inc(times)
        elif event == "fallback":
            metrics.FALLBACKS.labels(channel=channel).inc(times)
        else:  # found, resent: an in-doubt message settled (counted twice: how, and that)
            metrics.MESSAGES.labels(channel=channel, outcome="resolved").inc(times)
            metrics.IN_DOUBT_RESOLUTIONS.labels(channel=channel, resolution=event).inc(times)


@functools.cache
def _call_seconds(channel: str) -> Any:
    """The provider-call histogram of a channel (a label lookup per call costs a lock)."""
    return metrics.PROVIDER_CALL_SECONDS.labels(channel=channel)


def _logs_at_info(logger: Any) -> bool:
    enabled = getattr(logger, "is_enabled_for", None)
    return True if enabled is None else bool(enabled(logging.INFO))
