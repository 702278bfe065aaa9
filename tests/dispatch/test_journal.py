"""The journal: provider calls recorded as they start and end, a claim that fences every
write, SIGTERM that starts nothing new and hands back the rest, and the sweeper's
per-channel settlement of what a crash left in flight. On both backends, driven by a
scripted sender whose calls the test opens one by one (no clock involved)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, func, select, update

from backinstock import db, tasks, worker
from backinstock.config import DeliverySettings, InDoubtPolicy, Settings, SmtpSettings
from backinstock.contacts import Channel
from backinstock.dispatch import outcomes
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.journal import GroupCommit
from backinstock.dispatch.models import InDoubt, Notification, Status
from backinstock.flows import restock
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from backinstock.senders.base import (
    UNRECORDED,
    Journal,
    Outcome,
    OutgoingMessage,
    Sender,
    SendResult,
)
from backinstock.senders.outbox import DevOutboxSender
from backinstock.senders.registry import build_senders, close_senders
from tests.fakes.smtp import FakeSMTP
from tests.restocks.helpers import post_level
from tests.restocks.seed import seed_waiting


class ScriptedSender:
    """An SMS sender whose calls wait until the test opens them; ``inside`` runs in each
    call while it is in flight (to look at the database at that very moment)."""

    channel = "sms"
    marks_starts = True

    def __init__(
        self,
        concurrency: int,
        inside: Callable[[int], Awaitable[None]] | None = None,
        gated: bool = False,
    ) -> None:
        self._limit = asyncio.Semaphore(concurrency)
        self._inside = inside
        self.gates: dict[uuid.UUID, asyncio.Event] = {}
        self.in_flight: asyncio.Queue[uuid.UUID] = asyncio.Queue()
        self._gated = gated
        self.calls = 0
        self.journal: Any = UNRECORDED  # the claim's journal, once it sends

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]:
        self.journal = journal
        results = await asyncio.gather(*(self._one(m, journal) for m in messages))
        return [r for r in results if r is not None]

    async def _one(self, message: OutgoingMessage, journal: Journal) -> SendResult | None:
        async with self._limit:
            return await journal.call(message, lambda: self._call(message))

    async def _call(self, message: OutgoingMessage) -> SendResult:
        number = self.calls
        self.calls += 1
        if self._inside is not None:
            await self._inside(number)
        if self._gated:
            gate = self.gates.setdefault(message.notification_id, asyncio.Event())
            self.in_flight.put_nowait(message.notification_id)
            await gate.wait()
        return SendResult(message.notification_id, Outcome.SENT, provider_id=f"p{number}")


async def _plan(
    runtime: Runtime,
    client: httpx.AsyncClient,
    key: str,
    shoppers: int,
    channel: Channel = Channel.SMS,
) -> None:
    """A wave's notifications for ``shoppers`` shoppers, written and not yet sent."""
    await seed_waiting(runtime, shoppers, channel=channel)
    assert (await post_level(client, key, shoppers)).status_code == 202
    async with runtime.sessions() as session:
        wave_id = await session.scalar(select(Wave.id))
    assert wave_id is not None
    await restock.run(runtime.sessions, runtime.settings, wave_id, lambda ids: None)


async def _statuses(runtime: Runtime) -> Counter[str]:
    """Messages per state, a claimed message whose call has started counted as "inflight"."""
    started = Notification.call_started_at.is_not(None)
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.status, started, func.count()).group_by(
                Notification.status, started
            )
        )
        return Counter(
            {
                "inflight" if status == "sending" and on else str(status): int(n)
                for status, on, n in rows
            }
        )


async def _assert_handed_back_unstarted(runtime: Runtime) -> None:
    """The pending messages went back unstarted: not an attempt, and no claim holds them."""
    async with runtime.sessions() as session:
        back = await session.execute(
            select(Notification.attempts, Notification.claim_id).where(
                Notification.status == Status.PENDING
            )
        )
        assert set(back) == {(0, None)}


def _senders(runtime: Runtime, sms: Any) -> dict[str, Sender]:
    outbox = {c: DevOutboxSender(c, runtime.sessions, runtime.keys.cipher) for c in ("email",)}
    return {"sms": sms, "wechat": outbox["email"], **outbox}


def _exact(runtime: Runtime, **delivery: Any) -> Settings:
    """Settings whose journal marks each call alone (no marking ahead), unless told."""
    values = {"start_lookahead": 0, **delivery}
    return dataclasses.replace(runtime.settings, delivery=DeliverySettings(**values))


async def _deliver(
    runtime: Runtime,
    sms: Any,
    stopping: asyncio.Event | None = None,
    settings: Settings | None = None,
    clock: Any = None,
) -> int:
    return await dispatch.deliver(
        runtime.sessions,
        settings or _exact(runtime),
        runtime.keys,
        _senders(runtime, sms),
        None,
        None,
        stopping,
        clock or runtime.clock,
    )


async def test_each_result_is_committed_before_the_next_call_starts(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    shoppers = 12
    await _plan(runtime, client, api_keys["inventory"], shoppers)
    seen: list[Counter[str]] = []

    async def look(_: int) -> None:
        seen.append(await _statuses(runtime))

    assert await _deliver(runtime, ScriptedSender(concurrency=1, inside=look)) == shoppers
    # Inside call i: i messages already recorded as sent, this one in flight, the rest
    # claimed and not started. A crash at that moment puts one message in doubt, not 12.
    assert seen == [
        +Counter({"sent": i, "inflight": 1, "sending": shoppers - i - 1}) for i in range(shoppers)
    ]
    assert await _statuses(runtime) == {"sent": shoppers}


async def test_in_flight_rows_stay_within_the_senders_concurrency(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 60)
    in_flight: list[int] = []

    async def look(_: int) -> None:
        in_flight.append((await _statuses(runtime))["inflight"])

    await _deliver(runtime, ScriptedSender(concurrency=5, inside=look))
    # Calls running now, plus results of calls that ended while this one's start committed.
    assert max(in_flight) <= 2 * 5
    assert await _statuses(runtime) == {"sent": 60}


async def test_sigterm_starts_nothing_new_and_hands_back_the_unstarted(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 20)
    sender, stopping = ScriptedSender(concurrency=3, gated=True), asyncio.Event()
    delivering = asyncio.create_task(_deliver(runtime, sender, stopping))
    started = [await sender.in_flight.get() for _ in range(3)]
    stopping.set()  # a deploy: the three calls in flight finish, nothing else starts
    for notification_id in started:
        sender.gates[notification_id].set()
    assert await delivering == 20

    assert sender.calls == 3
    assert await _statuses(runtime) == {"sent": 3, "pending": 17}
    await _assert_handed_back_unstarted(runtime)


async def test_a_call_past_the_grace_period_stays_in_doubt(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 4)
    sender, stopping = ScriptedSender(concurrency=1, gated=True), asyncio.Event()
    quick = _exact(runtime, shutdown_grace_seconds=0.01)
    delivering = asyncio.create_task(_deliver(runtime, sender, stopping, quick))
    await sender.in_flight.get()  # the first call hangs and is never answered
    stopping.set()
    await delivering
    # Cancelled mid-call: the provider may have it, so it is not called sent, and not
    # handed back as unstarted either: in flight, settled later by the channel's policy.
    assert await _statuses(runtime) == {"inflight": 1, "pending": 3}


async def test_a_claim_taken_over_can_neither_start_nor_record(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 6)
    other_claim = uuid.uuid4()

    async def take_over_the_rest(number: int) -> None:
        if number == 0:  # another worker took the unstarted rows after our lease lapsed
            async with db.transaction(runtime.sessions) as session:
                await session.execute(
                    update(Notification)
                    .where(
                        Notification.status == Status.SENDING,
                        Notification.call_started_at.is_(None),
                    )
                    .values(claim_id=other_claim)
                )

    sender = ScriptedSender(concurrency=1, inside=take_over_the_rest)
    await _deliver(runtime, sender)
    assert sender.calls == 1
    async with runtime.sessions() as session:
        rows = list(await session.execute(select(Notification.status, Notification.claim_id)))
    assert Counter(rows) == {(Status.SENT.value, None): 1, (Status.SENDING.value, other_claim): 5}


@pytest.mark.parametrize("lookahead", [0, 4])
async def test_a_claim_near_the_end_of_its_lease_starts_no_further_call(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: Any,
    lookahead: int,
) -> None:
    """A database too slow to commit the renewal: once two thirds of the lease have gone by
    with none committed, the sweeper may soon hand the claim's messages to another worker,
    so no further call starts here, neither one waiting for its mark nor one marked ahead
    (which another worker would then send too). What never started goes back at once."""
    await _plan(runtime, client, api_keys["inventory"], 12)
    settings = _exact(runtime, start_lookahead=lookahead)
    lease = settings.waves.claim_lease_seconds

    async def run_out(number: int) -> None:
        if number == 0:
            clock.advance(lease * 2 / 3)

    sender = ScriptedSender(concurrency=1, inside=run_out)
    cut_short = REGISTRY.get_sample_value("backinstock_claims_cut_short_total") or 0
    assert await _deliver(runtime, sender, None, settings) == 12
    assert sender.calls == 1
    assert REGISTRY.get_sample_value("backinstock_claims_cut_short_total") == cut_short + 1
    assert await _statuses(runtime) == {"sent": 1, "pending": 11}
    await _assert_handed_back_unstarted(runtime)


async def test_a_renewal_committed_in_time_keeps_the_claim_sending(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, clock: Any
) -> None:
    """The limit follows the lease as each renewal commits it: past the first lease's last
    third, the claim goes on under the renewed one."""
    await _plan(runtime, client, api_keys["inventory"], 12)
    settings = _exact(runtime)  # each start waits for a commit: it carries the renewal
    lease = settings.waves.claim_lease_seconds
    sender: ScriptedSender

    async def renew_then_run_on(number: int) -> None:
        if number == 0:
            clock.advance(lease / 2)
            sender.journal.renew(clock.now() + timedelta(seconds=lease))
        elif number == 1:  # started after that renewal committed
            clock.advance(lease / 2)

    sender = ScriptedSender(concurrency=1, inside=renew_then_run_on)
    await _deliver(runtime, sender, None, settings)
    assert sender.calls == 12
    assert await _statuses(runtime) == {"sent": 12}


async def test_a_claim_cut_short_sends_no_email_twice_through_the_smtp_client(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, clock: Any
) -> None:
    """The same on production's path: aiosmtplib, with its pooled connections and the
    default marking ahead, to the suite's relay, whose first accepted message moves the
    clock past the lease's last third. The calls already under way (one per connection)
    end; nothing else starts; what never started goes back and the next claim sends it:
    every shopper gets one email."""
    shoppers = 12
    await _plan(runtime, client, api_keys["inventory"], shoppers, Channel.EMAIL)
    lease = runtime.settings.waves.claim_lease_seconds

    class RelayThatTakesItsTime(FakeSMTP):
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            answer = await super().handle_DATA(server, session, envelope)
            if len(self.messages) == 1:  # before the first 250 goes back to the worker
                clock.advance(lease * 2 / 3)
            return answer

    with RelayThatTakesItsTime() as relay:
        smtp = SmtpSettings(
            smtp_host="127.0.0.1",
            smtp_port=relay.port,
            smtp_starttls=False,
            smtp_from="shop@shop.example",
        )
        settings = dataclasses.replace(runtime.settings, smtp=smtp)
        senders = build_senders(settings, runtime.sessions, runtime.keys)
        deliver = functools.partial(
            dispatch.deliver, runtime.sessions, settings, runtime.keys, senders, None, None, None
        )
        try:
            await deliver(clock)  # the claim cut short
            told = len(relay.messages)
            assert 1 <= told <= smtp.smtp_connections, told
            assert await _statuses(runtime) == {"sent": told, "pending": shoppers - told}
            await _assert_handed_back_unstarted(runtime)
            await deliver(clock)  # the next claim, under a lease of its own
        finally:
            await close_senders(senders)
        recipients = Counter(r for m in relay.messages for r in m.rcpt_tos)
    assert len(recipients) == shoppers and set(recipients.values()) == {1}, recipients
    assert await _statuses(runtime) == {"sent": shoppers}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (InDoubtPolicy.RESEND, ("pending", InDoubt.UNRESOLVED.value)),
        (InDoubtPolicy.RECONCILE, ("pending", InDoubt.UNRESOLVED.value)),
        (InDoubtPolicy.DROP, ("failed", InDoubt.DROPPED.value)),
    ],
)
async def test_the_sweeper_settles_lapsed_claims_by_state_and_policy(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    policy: InDoubtPolicy,
    expected: tuple[str, str],
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 5)
    async with db.transaction(runtime.sessions) as session:
        ids = list(await session.scalars(select(Notification.id).order_by(Notification.id)))
        lapsed = db.utcnow() - timedelta(seconds=1)
        # A dead worker's claim: two calls not started, one in flight, and one in flight as
        # a worker before revision 0010 wrote it (a rolling deploy); one not claimed.
        states = [("sending", None), ("sending", None), ("sending", lapsed), ("inflight", None)]
        for notification_id, (status, started) in zip(ids, states, strict=False):
            await session.execute(
                update(Notification)
                .where(Notification.id == notification_id)
                .values(
                    status=status,
                    call_started_at=started,
                    channel="sms",
                    claim_id=uuid.uuid4(),
                    lease_until=lapsed,
                )
            )
    async with db.transaction(runtime.sessions) as session:
        policies = DeliverySettings(in_doubt_sms=policy)
        await outcomes.recover_expired(session, policies, runtime.clock.now())
    async with runtime.sessions() as session:
        rows = {
            row.id: (row.status, row.in_doubt, row.claim_id)
            for row in await session.execute(
                select(
                    Notification.id,
                    Notification.status,
                    Notification.in_doubt,
                    Notification.claim_id,
                )
            )
        }
    unstarted = ("pending", None, None)
    in_doubt = (*expected, None)
    assert [rows[i] for i in ids] == [unstarted, unstarted, in_doubt, in_doubt, unstarted]


async def _claim_all(runtime: Runtime, status: str, lease_until: Any) -> None:
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(Notification).values(
                status=status, channel="sms", claim_id=uuid.uuid4(), lease_until=lease_until
            )
        )


async def test_a_sweep_with_no_lapsed_claim_reads_the_claimed_rows_once(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 5)
    await _claim_all(runtime, "sending", runtime.clock.now() + timedelta(seconds=60))
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.transaction(runtime.sessions) as session:
            recovered = await outcomes.recover_expired(
                session, DeliverySettings(), runtime.clock.now()
            )
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", seen)
    assert recovered == outcomes.Recovered()
    assert len([s for s in statements if "notifications" in s]) == 1
    assert await _statuses(runtime) == {"sending": 5}


async def test_a_lapsed_claim_written_by_an_older_worker_is_found_on_its_own(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 2)
    await _claim_all(runtime, "inflight", runtime.clock.now() - timedelta(seconds=1))
    async with db.transaction(runtime.sessions) as session:
        recovered = await outcomes.recover_expired(session, DeliverySettings(), runtime.clock.now())
    assert recovered.in_doubt == {"sms": 2}
    assert await _statuses(runtime) == {"pending": 2}


@pytest.mark.parametrize(("stale", "drains"), [(150, 1), (1_000, worker.DRAIN_FANOUT)])
async def test_the_sweeper_sends_a_drain_a_batch_of_stale_work_up_to_its_fan_out(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    stale: int,
    drains: int,
) -> None:
    await _plan(runtime, client, api_keys["inventory"], stale)
    enqueued: list[str] = []
    monkeypatch.setattr(tasks, "enqueue", lambda name, *_: enqueued.append(name))
    await worker.sweep_once(runtime)
    assert enqueued.count(tasks.DRAIN) == 0  # nothing has waited long enough yet
    runtime.clock.advance(runtime.settings.waves.stale_after_seconds + 1)
    await worker.sweep_once(runtime)
    assert enqueued.count(tasks.DRAIN) == drains


async def test_marking_ahead_bounds_the_doubt_and_hands_back_what_never_started(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 30)
    in_flight: list[int] = []
    stopping = asyncio.Event()

    async def look(number: int) -> None:
        in_flight.append((await _statuses(runtime))["inflight"])
        if number == 9:
            stopping.set()  # a deploy while messages are marked ahead

    sender = ScriptedSender(concurrency=1, inside=look)
    await _deliver(runtime, sender, stopping, _exact(runtime, start_lookahead=4))
    # One call running, at most four marked ahead, and the results that came back since
    # the last commit began: the marks are topped up (with those results) every two starts,
    # so at most four wait for a commit.
    assert max(in_flight) <= 1 + 4 + 4
    assert sender.calls == 10
    # The marked-ahead messages that never started went back, as if never claimed.
    assert await _statuses(runtime) == {"sent": 10, "pending": 20}
    await _assert_handed_back_unstarted(runtime)


async def test_a_claim_marks_its_first_calls_itself_so_the_first_waits_for_no_commit(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    """The claim's transaction marks the channel's first START_LOOKAHEAD messages: when the
    first call runs, those four are in flight in the database and nothing else (a first
    call that asked for its own mark would have found itself and four more)."""
    await _plan(runtime, client, api_keys["inventory"], 12)
    in_flight: list[int] = []

    async def look(_: int) -> None:
        in_flight.append((await _statuses(runtime))["inflight"])

    sender = ScriptedSender(concurrency=1, inside=look)
    await _deliver(runtime, sender, None, _exact(runtime, start_lookahead=4))
    assert in_flight[0] == 4
    assert max(in_flight) <= 1 + 4 + 4
    assert await _statuses(runtime) == {"sent": 12}


async def test_a_claim_marks_nothing_in_flight_for_a_sender_that_records_no_starts(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    """The dev outbox's writes are harmless to repeat: it records results only, so its
    claims mark none of their messages in flight (a row written for nothing, and a doubt
    after a crash about messages that cannot be in doubt)."""
    await _plan(runtime, client, api_keys["inventory"], 12)
    outbox = DevOutboxSender("sms", runtime.sessions, runtime.keys.cipher)
    started: list[int] = []
    write = outbox._write

    async def counted(messages: list[Any]) -> list[Any]:
        started.append((await _statuses(runtime))["inflight"])
        return await write(messages)

    outbox._write = counted  # type: ignore[method-assign]
    await _deliver(runtime, outbox, None, _exact(runtime, start_lookahead=4))
    assert started == [0]
    assert await _statuses(runtime) == {"sent": 12}
    async with runtime.sessions() as session:
        marked = await session.scalar(
            select(func.count()).where(Notification.call_started_at.is_not(None))
        )
    assert marked == 0


async def _marks_per_commit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> list[int]:
    """How many marks ahead each group commit of one claim carried (the claim's own
    transaction aside), the sender making ``concurrency`` calls at once; every call reads
    the database once, so the commits run between the calls as they would in a worker."""
    carried: list[int] = []
    write = GroupCommit._write

    async def counted(self: GroupCommit, parts: list[Any]) -> None:
        carried.extend(len(group.wanted) for _, group in parts if group.wanted)
        await write(self, parts)

    async def look(_: int) -> None:
        await _statuses(runtime)

    monkeypatch.setattr(GroupCommit, "_write", counted)
    sender = ScriptedSender(concurrency=concurrency, inside=look)
    await _deliver(runtime, sender, None, _exact(runtime, start_lookahead=16))
    assert await _statuses(runtime) == {"sent": 64}
    return carried


@pytest.mark.parametrize(("concurrency", "low_water"), [(1, 4), (8, 8)])
async def test_a_sender_with_few_connections_asks_for_more_marks_per_commit(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    concurrency: int,
    low_water: int,
) -> None:
    """A window of 16: one call at a time (an email relay with one connection) asks for
    more marks once 4 are left, so each commit carries about 12; eight calls at once ask
    at half the window, about 8 a commit (their calls would otherwise outrun the commit).
    Asked at half the window whatever the sender, one call at a time got 8 a commit."""
    await _plan(runtime, client, api_keys["inventory"], 64)
    carried = await _marks_per_commit(runtime, monkeypatch, concurrency)
    assert sum(carried) == 64 - 16  # every message past the claim's own marks, once
    full = carried[:-1]  # the last commit takes what is left of the queue
    # Each asked once `low_water` were left: the rest of the window, give or take the call
    # that was starting.
    assert full and min(full) >= 16 - low_water - 1, carried


async def _two_claims(runtime: Runtime, group_commit: GroupCommit) -> None:
    """Two claims of one worker process at once (two Dramatiq threads), one group commit."""
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Notification.id).order_by(Notification.id)))
    half = len(ids) // 2
    first_calls: list[int] = []
    both_at_work = asyncio.Event()

    async def wait_for_the_other(number: int) -> None:
        if number == 0:  # each claim's first call waits until the other claim's has begun
            first_calls.append(number)
            if len(first_calls) == 2:
                both_at_work.set()
            await both_at_work.wait()

    await asyncio.gather(
        *(
            dispatch.deliver(
                runtime.sessions,
                _exact(runtime),
                runtime.keys,
                _senders(runtime, ScriptedSender(concurrency=1, inside=wait_for_the_other)),
                part,
                group_commit=group_commit,
            )
            for part in (ids[:half], ids[half:])
        )
    )


async def test_the_claims_of_one_worker_share_its_group_commits(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 12)
    parts_per_commit: list[int] = []
    write = GroupCommit._write

    async def counted(self: GroupCommit, parts: list[Any]) -> None:
        parts_per_commit.append(len(parts))
        await write(self, parts)

    monkeypatch.setattr(GroupCommit, "_write", counted)
    await _two_claims(runtime, GroupCommit(runtime.sessions))
    assert await _statuses(runtime) == {"sent": 12}
    # Each claim's calls wait for a commit (no marking ahead): while both claims are at
    # work, a transaction carries both claims' starts and results: most transactions do
    # (one claim may begin or end a commit or two ahead of the other).
    assert max(parts_per_commit) == 2
    assert parts_per_commit.count(2) > parts_per_commit.count(1), parts_per_commit


async def test_a_claim_whose_part_cannot_be_written_fails_alone(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 8)
    async with runtime.sessions() as session:
        poisoned = await session.scalar(select(Notification.id).order_by(Notification.id))
    record = outcomes.record_results

    async def refuse_one(
        session: Any, claim_id: uuid.UUID, deliveries: Any, results: Any, now: Any
    ) -> list[outcomes.Recorded]:
        if any(r.notification_id == poisoned for r in results):
            raise RuntimeError("a value the database refuses")
        return await record(session, claim_id, deliveries, results, now)

    monkeypatch.setattr(outcomes, "record_results", refuse_one)
    await _two_claims(runtime, GroupCommit(runtime.sessions))
    async with runtime.sessions() as session:
        rows = dict(
            (row.id, row.status)
            for row in await session.execute(select(Notification.id, Notification.status))
        )
    # The poisoned claim's commits kept failing: its message stays in flight for the
    # sweeper (in doubt, not lost) and its other messages, never started, went back. The
    # other claim, which shared its commits, was recorded in full.
    assert rows.pop(poisoned) == "sending"
    assert Counter(rows.values()) == {"sent": 4, "pending": 3}


async def test_calls_are_recorded_at_the_dispatchers_clock(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, clock: Any
) -> None:
    """When a call started and ended is the injected clock's time, not the host's."""
    await _plan(runtime, client, api_keys["inventory"], 3)
    clock.advance(3 * 86400)  # days from the host's time: a host-time stamp would show
    told_at = clock.now()  # the clock runs on from here, three days ahead of the host
    sender = ScriptedSender(concurrency=1)
    await dispatch.deliver(
        runtime.sessions,
        _exact(runtime),
        runtime.keys,
        _senders(runtime, sender),
        None,
        None,
        None,
        clock,
    )
    async with runtime.sessions() as session:
        stamps = list(await session.scalars(select(Notification.sent_at)))
    assert len(stamps) == 3
    assert all(stamp is not None and told_at <= stamp <= clock.now() for stamp in stamps)
