"""Dramatiq's side: the actors, the context they share in a process, and the sweeper that
makes the broker optional. The broker itself (Redis in production, in-process when
embedded) and the task names live in :mod:`backinstock.tasks`, through which the API
enqueues without importing this module.

Actors take ids and open their own sessions; messages only say "look at this". The sweeper
runs in every worker process (and in ``serve`` when embedded): every second it wakes due
waves, settles lapsed claims (:func:`~backinstock.dispatch.outcomes.recover_expired`) and
drains pending work nobody picked up, so a flushed broker or a killed worker delays
messages by seconds and loses none.

Shutdown (SIGTERM, a deploy): Dramatiq calls ``before_worker_shutdown`` before it waits for
the running actors. That sets each context's ``stopping`` event: no provider call starts
after it, calls in flight get ``SHUTDOWN_GRACE_SECONDS``, unstarted claims go back to the
queue, and the actors return. Connections are closed only after the actors have finished.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

from backinstock import db, tasks
from backinstock.clock import SYSTEM_CLOCK, Clock
from backinstock.config import Settings
from backinstock.dispatch import outcomes
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.journal import GroupCommit
from backinstock.flows import followups, restock, substitutes
from backinstock.ops import metrics
from backinstock.ops.heap import settle_heap
from backinstock.ops.logging import configure_logging, quiet_data_loggers
from backinstock.privacy import retention
from backinstock.ratelimit import Throttle, local_limiter, shared_limiter
from backinstock.restocks import waves
from backinstock.runtime import Runtime
from backinstock.senders.base import Sender
from backinstock.senders.registry import build_senders, close_senders, load_configured

log = structlog.get_logger(__name__)
# Drains a sweep sends at most: one a batch of stale work. So a sweep counts the stale work
# only that far; during a big wave the backlog is always stale, and counting all of it
# (up to 100,000 rows, in every sweep of every worker process) was a pass over the queue's
# head each second for a figure of which only "at least 800" was read.
DRAIN_FANOUT = 4
# Retention work is slow-moving (days); once a minute per worker, at a random phase, is plenty.
RETENTION_EVERY_SECONDS = 60


class Sweeper(Middleware):
    """Starts the sweep loop on the worker's event loop once the worker has booted, and
    drains the sends when it stops."""

    def __init__(self) -> None:
        self._futures: dict[int, Any] = {}  # per worker: one broker may run several

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        thread = get_event_loop_thread()
        if thread is not None and _embedding.sweep:
            future = asyncio.run_coroutine_threadsafe(sweep_forever(), thread.loop)
            self._futures[id(worker)] = future

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        future = self._futures.pop(id(worker), None)
        if future is not None:
            future.cancel()
        thread = get_event_loop_thread()
        if thread is not None:
            asyncio.run_coroutine_threadsafe(_stop_sending(), thread.loop).result(timeout=10)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # Runs before the AsyncIO middleware stops the loop (Dramatiq calls "after" hooks in
        # reverse order), once the actors have returned.
        thread = get_event_loop_thread()
        if thread is not None:
            asyncio.run_coroutine_threadsafe(_close_context(), thread.loop).result(timeout=10)


class LogContext(Middleware):
    """Each message's work logs with what the message carries (the request id of the
    webhook that caused it, its wave; see ``tasks.enqueue``) and its actor. Bound in the
    worker thread before the actor runs: the actor's coroutine is handed to the event loop
    from that thread (``run_coroutine_threadsafe``) and runs in a copy of its context."""

    def before_process_message(self, broker: Any, message: Any) -> None:
        carried = message.options.get("log_context") or {}
        bound = {key: carried[key] for key in tasks.CARRIED_LOG_CONTEXT if carried.get(key)}
        if message.actor_name == tasks.RUN_WAVE.name and message.args:
            bound["wave_id"] = str(message.args[0])
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(actor=message.actor_name, **bound)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message

    def after_process_boot(self, broker: Any) -> None:
        """A Dramatiq worker process (``backinstock worker``): our lines in the configured
        shape and level (Dramatiq keeps its own handler), and every channel's counters
        at 0."""
        settings = Settings.from_env()
        configure_logging(settings.core.log_level, settings.core.log_json, libraries=False)
        metrics.initialise_worker_metrics()
        load_configured(settings)  # frozen with the rest, below
        settle_heap()


# The process's broker (built here if the API has not built it yet); the sweeper runs in
# every worker that consumes from it. Added after AsyncIO, so that its "after" hooks run
# before AsyncIO's (Dramatiq calls them in reverse order).
broker = tasks.broker()
broker.add_middleware(Sweeper())
broker.add_middleware(LogContext())
quiet_data_loggers()  # in Dramatiq's worker processes too, where nothing else would


@dataclass
class WorkerContext:
    runtime: Runtime
    senders: dict[str, Sender]
    throttle: Throttle
    stopping: asyncio.Event  # set on SIGTERM: start no provider call
    # One group commit for every claim this process works at once (dispatch.journal).
    group_commit: GroupCommit


_contexts: dict[asyncio.AbstractEventLoop, WorkerContext] = {}


@dataclass
class Embedding:
    """How this process's workers run: a test gives them its clock and ticks the sweeper
    itself (:func:`sweep_once`), so that time moves only when it says so."""

    clock: Clock = SYSTEM_CLOCK
    sweep: bool = True


_embedding = Embedding()


async def context() -> WorkerContext:
    """One runtime per event loop: connections belong to the loop that opened them."""
    loop = asyncio.get_running_loop()
    if loop not in _contexts:
        runtime = Runtime.create(Settings.from_env(), _embedding.clock)
        senders = build_senders(runtime.settings, runtime.sessions, runtime.keys, runtime.redis)
        throttle: Throttle = shared_limiter(runtime.redis) if runtime.redis else local_limiter()
        _contexts[loop] = WorkerContext(
            runtime, senders, throttle, asyncio.Event(), group_commit(runtime)
        )
    return _contexts[loop]


def group_commit(runtime: Runtime) -> GroupCommit:
    delivery = runtime.settings.delivery
    return GroupCommit(
        runtime.sessions,
        flush_after=delivery.record_after_seconds,
        flush_results=delivery.record_results,
    )


async def _stop_sending() -> None:
    ctx = _contexts.get(asyncio.get_running_loop())
    if ctx is not None:
        ctx.stopping.set()


async def _close_context() -> None:
    ctx = _contexts.pop(asyncio.get_running_loop(), None)
    if ctx is not None:
        await close_senders(ctx.senders)
        await ctx.runtime.close()


@dramatiq.actor(
    actor_name=tasks.RUN_WAVE.name, queue_name=tasks.RUN_WAVE.queue, max_retries=10, min_backoff=500
)
async def run_wave(wave_id: str) -> None:
    ctx = await context()
    rt = ctx.runtime
    await restock.run(rt.sessions, rt.settings, uuid.UUID(wave_id), wake_senders, rt.clock)


@dramatiq.actor(
    actor_name=tasks.SEND.name, queue_name=tasks.SEND.queue, max_retries=10, min_backoff=500
)
async def send_notifications(ids: list[str]) -> None:
    ctx = await context()
    rt = ctx.runtime
    ids_ = [uuid.UUID(i) for i in ids]
    await dispatch.deliver(
        rt.sessions,
        rt.settings,
        rt.keys,
        ctx.senders,
        ids_,
        ctx.throttle,
        ctx.stopping,
        rt.clock,
        group_commit=ctx.group_commit,
    )


@dramatiq.actor(
    actor_name=tasks.DRAIN.name, queue_name=tasks.DRAIN.queue, max_retries=10, min_backoff=500
)
async def drain() -> None:
    """Send due pending notifications, whoever planned them, until there are none."""
    ctx = await context()
    rt = ctx.runtime
    while not ctx.stopping.is_set() and await dispatch.deliver(
        rt.sessions,
        rt.settings,
        rt.keys,
        ctx.senders,
        None,
        ctx.throttle,
        ctx.stopping,
        rt.clock,
        group_commit=ctx.group_commit,
    ):
        pass


def wake_senders(ids: Sequence[uuid.UUID]) -> None:
    for start in range(0, len(ids), dispatch.BATCH):
        tasks.enqueue(tasks.SEND, [str(i) for i in ids[start : start + dispatch.BATCH]])


async def sweep_once(rt: Runtime) -> None:
    """One tick of the sweeper, at ``rt.clock``'s now: release expired holds (making their
    waves due), wake due waves, settle lapsed claims,
    plan due follow-ups and substitute offers, and drain forgotten work."""
    stale_after = timedelta(seconds=rt.settings.waves.stale_after_seconds)
    now = rt.clock.now()
    # Work that waited past stale_after behind queued wake-ups (and drains) is waiting its
    # turn, not lost: during a big wave the whole backlog does, and drains then raced the
    # wake-ups for the same rows (half of a 100,000-shopper wave's messages were claimed by
    # drains, and a wake-up in two found its rows taken). It is lost only once no wake-up
    # is left to come for it: a flushed broker empties the queue. The bar is one sweep's
    # drains, so drains a sweep sent that no worker has taken yet hold back the next ones.
    behind_wake_ups = (tasks.waiting(tasks.SEND) or 0) >= DRAIN_FANOUT
    async with db.transaction(rt.sessions) as session:
        await restock.release_expired_holds(session, now)  # their waves are due now
        due_waves = await waves.due(session, now)
        recovered = await outcomes.recover_expired(session, rt.settings.delivery, now)
        stale = 0
        if not behind_wake_ups:  # counted only as far as the drains it may send
            cap = DRAIN_FANOUT * dispatch.BATCH
            stale = await dispatch.stale_pending(session, stale_after, now, cap=cap)
    metrics.SWEEPS.inc()
    _count_recovered(recovered)
    for wave_id in due_waves:
        tasks.wake_wave(wave_id)
    wake_senders(await followups.plan_due(rt.sessions, rt.settings, rt.clock.now()))
    wake_senders(await substitutes.plan_due(rt.sessions, rt.settings, rt.clock.now()))
    # What a lapsed claim handed back has no wake-up left (its message was taken): drains.
    drains = min(DRAIN_FANOUT, math.ceil((stale + recovered.requeued) / dispatch.BATCH))
    for _ in range(drains):
        tasks.enqueue(tasks.DRAIN)


def _count_recovered(recovered: outcomes.Recovered) -> None:
    for channel, messages in recovered.in_doubt.items():
        metrics.MESSAGES.labels(channel=channel, outcome="in_doubt").inc(messages)
        log.warning("messages_in_doubt", channel=channel, messages=messages)
    for channel, messages in recovered.dropped.items():
        metrics.MESSAGES.labels(channel=channel, outcome="resolved").inc(messages)
        metrics.IN_DOUBT_RESOLUTIONS.labels(channel=channel, resolution="dropped").inc(messages)


async def retain_once(rt: Runtime) -> None:
    """Expire exhausted subscriptions, erase stopped ones' contacts and unconfirmed
    requests (a batch of each)."""
    async with db.transaction(rt.sessions) as session:
        now = rt.clock.now()
        await retention.expire_exhausted(session, rt.settings, now)
        await retention.erase_stopped(session, rt.settings, now)
        await retention.discard_unconfirmed(session, rt.settings, now)


async def sweep_forever() -> None:
    ctx = await context()
    interval = ctx.runtime.settings.waves.sweep_interval_seconds
    next_retention = time.monotonic() + RETENTION_EVERY_SECONDS * random.random()
    while True:
        try:
            await sweep_once(ctx.runtime)
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_EVERY_SECONDS
                await retain_once(ctx.runtime)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database may be restarting: try again next tick
            metrics.SWEEP_FAILURES.inc()
            log.warning("sweep_failed", error_type=type(exc).__name__)
        await asyncio.sleep(interval)


def start_embedded_worker(
    threads: int, *, clock: Clock = SYSTEM_CLOCK, sweep: bool = True, poll_ms: int = 100
) -> dramatiq.Worker:
    """The embedded mode's workers: the same actors and sweeper, inside this process.
    ``sweep=False`` leaves the sweeper's ticks to the caller (:func:`sweep_once`).
    ``poll_ms`` is Dramatiq's worker timeout, as ``backinstock worker --poll-ms``: how long
    an idle thread waits before it looks again (and so how long a stop may take).
    """
    global _embedding
    _embedding = Embedding(clock, sweep)
    metrics.initialise_worker_metrics()
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=poll_ms)
    worker.start()
    return worker
