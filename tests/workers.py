"""Driving the in-process workers from a test: run the sweeper's tick at the test clock's
now, and wait until every message on the broker has been processed. After ``await tick()``
everything due at that instant has happened, so a test may assert that nothing else did."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select

from backinstock import worker
from backinstock.dispatch.models import Notification, Status
from backinstock.runtime import Runtime
from tests.clock import SteppingClock

# Queues in the order work flows: a wave's step wakes senders, senders wake nobody.
QUEUES = ("waves", "dispatch")
JOIN_TIMEOUT_MS = 120_000  # a deadline against a hang, not a measure of anything
# The longest retry backoff (dispatch.outcomes.backoff) plus the sweeper's stale delay.
RETRY_STEP_SECONDS = 300 + 60


async def settle() -> None:
    """Return once the workers have processed every message sent so far."""
    await asyncio.to_thread(_join_queues)


async def tick() -> None:
    """One sweeper tick in the workers (their runtime, settings and clock), then settle."""
    await in_worker_loop(_sweep)
    await settle()


async def in_worker_loop(make: Callable[[], Awaitable[None]]) -> None:
    """Run a coroutine on the workers' event loop, where their connections live."""
    thread = get_event_loop_thread()
    assert thread is not None, "start a worker first"
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(make), thread.loop))


async def _awaited(make: Callable[[], Awaitable[None]]) -> None:
    await make()


async def _sweep() -> None:
    ctx = await worker.context()
    await worker.sweep_once(ctx.runtime)


def _join_queues() -> None:
    for queue in QUEUES:
        if isinstance(worker.broker, RedisBroker):
            worker.broker.join(queue, interval=10, timeout=JOIN_TIMEOUT_MS)
        else:
            worker.broker.join(queue, timeout=JOIN_TIMEOUT_MS)


async def tick_until_delivered(runtime: Runtime, clock: SteppingClock, rounds: int = 30) -> None:
    """Settle, then tick past the longest retry delay until no message waits to be sent:
    retries after transient errors and fallbacks to a shopper's next contact all run."""
    await settle()
    for _ in range(rounds):
        if not await _waiting(runtime):
            return
        clock.advance(RETRY_STEP_SECONDS)
        await tick()
    assert not await _waiting(runtime), f"messages still pending after {rounds} ticks"


async def _waiting(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        query = select(func.count()).where(Notification.status == Status.PENDING)
        return int(await session.scalar(query) or 0)
