"""The sweeper's drains: for work that no wake-up will come for (a flushed broker, a claim
handed back), not for work that only waits its turn behind queued wake-ups."""

from __future__ import annotations

from collections import Counter

import httpx
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from backinstock import tasks, worker
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.dispatch.test_journal import _plan


def _waiting_actors() -> Counter[str]:
    """The actors of the messages waiting in the dispatch queue (taken by no worker)."""
    broker = tasks.broker()
    queue = tasks.SEND.queue
    if isinstance(broker, RedisBroker):
        ids = broker.client.lrange(f"{broker.namespace}:{queue}", 0, -1)
        bodies = [broker.client.hget(f"{broker.namespace}:{queue}.msgs", i) for i in ids]
    else:
        bodies = list(broker.queues[queue].queue)
    return Counter(Message.decode(body).actor_name for body in bodies)


async def test_stale_work_behind_queued_wake_ups_is_drained_only_once_they_are_gone(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str], clock: SteppingClock
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 10)  # written, nobody woken
    for _ in range(worker.DRAIN_FANOUT):  # wake-ups that no worker has taken yet
        tasks.enqueue(tasks.SEND, [])
    clock.advance(60)  # the planned messages are long past stale_after
    try:
        await worker.sweep_once(runtime)
        assert _waiting_actors() == {tasks.SEND.name: worker.DRAIN_FANOUT}, "no drain yet"

        tasks.broker().flush(tasks.SEND.queue)  # the wake-ups are gone (a flushed broker)
        await worker.sweep_once(runtime)
        assert _waiting_actors() == {tasks.DRAIN.name: 1}  # 10 messages: one drain's batch
    finally:
        tasks.broker().flush_all()
