"""A restock wave through a real provider client, with faults: worker processes killed with
SIGKILL or stopped with SIGTERM at random moments, the broker flushed, then counted from the
provider's side (the fake server) and from the database.

Used by the crash tests (``tests/dispatch/test_crash_providers.py``) and by
``bench/crash.py``, so that the suite and the benchmark measure the same thing.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backinstock.contacts import Channel
from backinstock.dispatch.models import Notification, Status
from backinstock.runtime import Runtime
from tests.fakes.smtp import FakeSMTP
from tests.fakes.twilio import FakeTwilio
from tests.fakes.wechat import FakeWeChat
from tests.server import BackinstockProcess, ServerProcess
from tests.waiting import eventually

SID, TOKEN, SECRET = "AC" + "0" * 32, "twilio-token", "wx-secret"
# Short leases and a fast sweeper: a killed worker's claims come back within seconds.
FAST = {
    "BACKINSTOCK_CLAIM_LEASE_SECONDS": "3",
    "BACKINSTOCK_SWEEP_INTERVAL_SECONDS": "0.5",
    "BACKINSTOCK_STALE_AFTER_SECONDS": "1",
    "BACKINSTOCK_SHUTDOWN_GRACE_SECONDS": "10",
    "BACKINSTOCK_LOG_LEVEL": "WARNING",
}
OPEN = ("pending", "sending", "inflight")
SMTP_CONNECTIONS = 8
WORKER_ARGS = ("worker", "--processes", "1", "--threads", "4")
READY = "is ready for action"  # what each Dramatiq worker process logs once it consumes


@dataclass
class Provider:
    """A fake provider server and the settings that point the real client at it."""

    channel: Channel
    fake: Any
    env: dict[str, str]

    def recipients(self) -> list[str]:
        """One entry per message the provider accepted: who it was for."""
        if self.channel is Channel.SMS:
            return [m.to for m in self.fake.messages]
        if self.channel is Channel.EMAIL:
            return [r for m in self.fake.messages for r in m.rcpt_tos]
        return [m.touser for m in self.fake.messages]

    def accepted_at(self) -> list[float]:
        """When each accepted message came in (``time.monotonic()`` of this process)."""
        return [m.received_at for m in self.fake.messages]

    def message_ids(self) -> list[str]:
        assert self.channel is Channel.EMAIL
        return [str(m.message["Message-ID"]) for m in self.fake.messages]

    def stop(self) -> None:
        self.fake.stop()


def start_provider(
    channel: Channel,
    *,
    rate: float,
    accept_delay: float,
    smtp_connections: int = SMTP_CONNECTIONS,
) -> Provider:
    """The fake for ``channel``, answering each accepted message ``accept_delay`` late (so
    that a kill catches messages the provider has but the worker never heard of), and the
    client settings for it, throttled to ``rate`` messages a second across all workers
    (0: not throttled)."""
    env = {**FAST}
    if channel is Channel.SMS:
        fake: Any = FakeTwilio(account_sid=SID, auth_token=TOKEN, accept_delay=accept_delay)
        fake.start()
        env |= {
            "BACKINSTOCK_TWILIO_ACCOUNT_SID": SID,
            "BACKINSTOCK_TWILIO_AUTH_TOKEN": TOKEN,
            "BACKINSTOCK_TWILIO_FROM": "+15005550006",
            "BACKINSTOCK_TWILIO_API_BASE": fake.base_url,
            "BACKINSTOCK_TWILIO_RATE_PER_SECOND": str(rate),
        }
    elif channel is Channel.EMAIL:
        fake = FakeSMTP(accept_delay=accept_delay)
        fake.start()
        env |= {
            "BACKINSTOCK_SMTP_HOST": "127.0.0.1",
            "BACKINSTOCK_SMTP_PORT": str(fake.port),
            "BACKINSTOCK_SMTP_STARTTLS": "false",
            "BACKINSTOCK_SMTP_FROM": "shop@shop.example",
            "BACKINSTOCK_SMTP_RATE_PER_SECOND": str(rate),
            "BACKINSTOCK_SMTP_CONNECTIONS": str(smtp_connections),
        }
    else:
        fake = FakeWeChat(secret=SECRET, accept_delay=accept_delay)  # an app of its own
        fake.start()
        env |= {
            "BACKINSTOCK_WECHAT_APP_ID": fake.appid,
            "BACKINSTOCK_WECHAT_APP_SECRET": SECRET,
            "BACKINSTOCK_WECHAT_TEMPLATE_ID": "TPL-restock",
            "BACKINSTOCK_WECHAT_API_BASE": fake.base_url,
            "BACKINSTOCK_WECHAT_RATE_PER_SECOND": str(rate),
        }
    return Provider(channel, fake, env)


@dataclass(frozen=True)
class Fault:
    kind: str  # "kill" (SIGKILL the process group), "term" (SIGTERM), "flush" (broker)
    after: int  # once the provider has accepted this many messages


@dataclass
class Tally:
    shoppers: int
    messages: int  # accepted by the provider
    told: int  # distinct shoppers who got at least one
    duplicates: int  # messages beyond the first per shopper
    in_doubt: Counter[str] = field(default_factory=Counter)  # resolution -> messages
    open_after_term: list[int] = field(default_factory=list)  # claimed rows left by SIGTERM
    term_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0  # worker start -> every shopper told and no message open
    posted_at: float = 0.0  # time.monotonic() when the restock was answered (202)
    last_accepted_at: float = 0.0  # time.monotonic() of the provider's last accepted message
    same_message_id: bool | None = None  # email: every copy of a message shares its id

    @property
    def lost(self) -> int:
        return self.shoppers - self.told

    @property
    def per_second(self) -> float:
        return self.shoppers / self.seconds if self.seconds else 0.0

    @property
    def wave_seconds(self) -> float:
        """From the restock's 202 to the last message the provider accepted."""
        return self.last_accepted_at - self.posted_at

    @property
    def wave_per_second(self) -> float:
        return self.shoppers / self.wave_seconds if self.wave_seconds > 0 else 0.0


def random_faults(seed: int, shoppers: int, kinds: list[str]) -> list[Fault]:
    """Faults at random points of the wave, in order, leaving its last fifth undisturbed."""
    rng = random.Random(seed)
    points = sorted(rng.sample(range(shoppers // 10, shoppers * 4 // 5), len(kinds)))
    return [Fault(kind, after) for kind, after in zip(kinds, points, strict=True)]


def worker_process(
    env: dict[str, str],
    log: Path,
    embedded: bool = False,
    args: tuple[str, ...] = WORKER_ARGS,
) -> BackinstockProcess:
    if embedded:
        return ServerProcess(env, log)
    return BackinstockProcess(list(args), env, log)


async def run_wave(
    runtime: Runtime,
    provider: Provider,
    shoppers: int,
    faults: list[Fault],
    restock: Callable[[BackinstockProcess], Any],
    log_dir: Path,
    *,
    embedded: bool = False,
    within: float = 240,
    worker_env: dict[str, str] | None = None,
    worker_args: tuple[str, ...] = WORKER_ARGS,
    ready_first: bool = False,
    journaled: bool = True,
) -> Tally:
    """Start a worker (or an embedded server), post the restock, inject ``faults`` in
    order (restarting the worker after each kill or stop), and wait until every shopper
    was told and no message is open. Returns what the provider and the database show.

    ``worker_env`` is added to the provider's settings for the worker (e.g. another
    PYTHONPATH); ``ready_first`` waits until its worker processes consume before the
    restock is posted (so that a timing starts with a running worker); ``journaled=False``
    for a schema without the ``in_doubt`` column (nothing in doubt is then counted)."""
    tally = Tally(shoppers, 0, 0, 0)
    dead_claims: set[uuid.UUID] = set()  # claims of killed processes, until handed back
    env = {**provider.env, **(worker_env or {})}
    worker = worker_process(env, log_dir / "worker.log", embedded, worker_args)
    ready_before = _ready_lines(worker)
    worker.start()
    started = time.monotonic()
    try:
        if ready_first and not embedded:
            await _until(lambda: _ready_lines(worker) > ready_before, within)
        await restock(worker)
        tally.posted_at = time.monotonic()
        for fault in faults:
            await _until(lambda f=fault: len(provider.recipients()) >= f.after, within)  # type: ignore[misc]
            await _inject(runtime, worker, fault, tally, dead_claims, within)
        await _until(lambda: len(set(provider.recipients())) >= shoppers, within)
        await until_settled(runtime, within)
        tally.seconds = time.monotonic() - started
    finally:
        worker.stop()
    recipients = provider.recipients()
    tally.messages, tally.told = len(recipients), len(set(recipients))
    tally.duplicates = tally.messages - tally.told
    tally.last_accepted_at = max(provider.accepted_at(), default=tally.posted_at)
    if journaled:
        tally.in_doubt = await in_doubt_resolutions(runtime)
    if provider.channel is Channel.EMAIL:
        tally.same_message_id = _copies_share_ids(recipients, provider.message_ids())
    return tally


def _ready_lines(worker: BackinstockProcess) -> int:
    """How many times the worker's log says a worker process is ready (the log is appended
    to by every start)."""
    try:
        return worker.log_path.read_text(errors="replace").count(READY)
    except FileNotFoundError:
        return 0


async def _inject(
    runtime: Runtime,
    worker: BackinstockProcess,
    fault: Fault,
    tally: Tally,
    dead_claims: set[uuid.UUID],
    within: float,
) -> None:
    if fault.kind == "flush":
        assert runtime.redis is not None, "a broker flush needs the Redis broker"
        await runtime.redis.flushdb()
        return
    if fault.kind == "kill":
        worker.kill()
        dead_claims |= await claims_held(runtime)  # nobody else runs: all the dead one's
    else:
        # What a stopped worker leaves is only its own if a killed one's claims are gone.
        await _until_handed_back(runtime, dead_claims, within)
        tally.term_seconds.append(worker.terminate())
        tally.open_after_term.append(await claimed_rows(runtime))
    worker.start()


async def claims_held(runtime: Runtime) -> set[uuid.UUID]:
    async with runtime.sessions() as session:
        held = await session.scalars(
            select(Notification.claim_id).where(Notification.claim_id.is_not(None)).distinct()
        )
        return {claim for claim in held if claim is not None}


async def _until_handed_back(runtime: Runtime, claims: set[uuid.UUID], within: float) -> None:
    async def handed_back() -> bool:
        return not claims & await claims_held(runtime)

    await eventually(handed_back, within, "a killed worker's claims handed back")


async def claimed_rows(runtime: Runtime) -> int:
    """Messages held by a claim (unstarted or in flight)."""
    async with runtime.sessions() as session:
        held = [Status.SENDING, Status.INFLIGHT]
        count = await session.scalar(select(func.count()).where(Notification.status.in_(held)))
        return int(count or 0)


async def in_doubt_resolutions(runtime: Runtime) -> Counter[str]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.in_doubt, func.count())
            .where(Notification.in_doubt.is_not(None))
            .group_by(Notification.in_doubt)
        )
        return Counter({str(k): int(v) for k, v in rows})


async def open_messages(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        count = await session.scalar(select(func.count()).where(Notification.status.in_(OPEN)))
        return int(count or 0)


async def until_settled(runtime: Runtime, within: float) -> None:
    """Wait until no message is open: every one sent, failed or cancelled, none claimed."""

    async def settled() -> bool:
        return not await open_messages(runtime)

    await eventually(settled, within, "every message settled")


async def _until(check: Callable[[], bool], within: float) -> None:
    await eventually(check, within, "the provider and the workers got there")


def _copies_share_ids(recipients: list[str], message_ids: list[str]) -> bool:
    """Every recipient's copies carry one Message-ID (a mail store shows them once)."""
    ids: dict[str, set[str]] = {}
    for recipient, message_id in zip(recipients, message_ids, strict=True):
        ids.setdefault(recipient, set()).add(message_id)
    return all(len(found) == 1 for found in ids.values())
