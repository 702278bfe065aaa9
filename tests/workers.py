"""Driving the in-process workers from a test: run the sweeper's tick at the test clock's
now, and wait until every message on the broker has been processed. After ``await tick()``
everything due at that instant has happened, so a test may assert that nothing else did."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker

from backinstock import worker

# Queues in the order work flows: a wave's step wakes senders, senders wake nobody.
QUEUES = ("waves", "dispatch")
JOIN_TIMEOUT_MS = 120_000  # a deadline against a hang, not a measure of anything


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
