"""Work handed to the workers, by name: the process's broker and what is sent through it.

The API (a router's after-commit wake-up) and the sweeper send messages by task name; only
:mod:`backinstock.worker` declares the actors that run them. So a router never imports the
worker, and importing the app builds no broker: the process's broker is built from the
environment on first use (a wake-up, or the worker module being imported), once.

In the embedded mode (no Redis) the broker is in-process and the API's own Dramatiq workers
consume from it; with Redis the API only enqueues and ``backinstock worker`` consumes.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
import structlog
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import dq_name
from dramatiq.middleware import AsyncIO

from backinstock.config import Settings

log = structlog.get_logger(__name__)
# The broker's scripts are short; a reply slower than this means Redis is in trouble.
BROKER_SOCKET_TIMEOUT = 5.0
# How often an idle consumer of a delay queue looks for messages, at most (milliseconds).
DELAY_QUEUE_POLL_MS = 1000


class PolledRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, its delay queues polled less often than its queues.

    Every queue has a delay queue, and each gets a consumer in every worker process that
    polls Redis (a Lua fetch) every 0.5-1x the worker's ``--poll-ms`` while idle: 107
    fetches a second for an idle host of two processes, 5-6 % of a core. Only retries go
    through the delay queues, after a backoff of at least 500 ms, so polling them at most
    every ``DELAY_QUEUE_POLL_MS`` costs a retry up to that much more wait and halves the
    fetches (and a worker's stop, which joins its consumers, up to that much more time).
    The queues themselves keep ``--poll-ms``: the first message's second rests on them."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if dq_name(queue_name) == queue_name:
            timeout = max(timeout, DELAY_QUEUE_POLL_MS)
        return super().consume(queue_name, prefetch, timeout)


@dataclass(frozen=True)
class Task:
    """An actor's name and queue, as :mod:`backinstock.worker` declares it."""

    name: str
    queue: str


RUN_WAVE = Task("waves.run", "waves")
SEND = Task("dispatch.send", "dispatch")
DRAIN = Task("dispatch.drain", "dispatch")
TASKS = (RUN_WAVE, SEND, DRAIN)

_broker: dramatiq.Broker | None = None
_lock = threading.Lock()


def make_broker(settings: Settings) -> dramatiq.Broker:
    """Redis when configured, else in-process; its queues declared, so that a message sent
    before any worker starts waits for one."""
    broker: dramatiq.Broker
    if settings.core.redis_url:
        # Timeouts, so that a Redis that stops answering (not one that refuses) cannot hold
        # the API's after-commit wake-ups: the sweeper finds the work in the database anyway.
        timeout = settings.core.redis_timeout_seconds
        client = redis.Redis.from_url(
            settings.core.redis_url,
            socket_connect_timeout=timeout,
            socket_timeout=max(BROKER_SOCKET_TIMEOUT, timeout),
        )
        broker = PolledRedisBroker(client=client, namespace="backinstock")  # type: ignore[no-untyped-call]
    else:
        broker = StubBroker()
    broker.add_middleware(AsyncIO())
    for task in TASKS:
        broker.declare_queue(task.queue)
    return broker


def broker() -> dramatiq.Broker:
    """The process's broker (also Dramatiq's global one), built on first use."""
    global _broker
    with _lock:
        if _broker is None:
            _broker = make_broker(Settings.from_env())
            dramatiq.set_broker(_broker)
        return _broker


# Log context a message carries to the worker that runs it (worker.LogContext binds it),
# so that the worker's lines for a restock carry the request id of its webhook.
CARRIED_LOG_CONTEXT = ("request_id", "wave_id")


def log_context() -> dict[str, str]:
    bound = structlog.contextvars.get_contextvars()
    return {key: str(bound[key]) for key in CARRIED_LOG_CONTEXT if bound.get(key)}


def enqueue(task: Task, *args: Any) -> None:
    # Called after commit: the database already holds the work. If the broker is down the
    # sweeper finds the work within seconds, so the request that caused it still succeeds.
    carried = log_context()
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=task.queue,
        actor_name=task.name,
        args=args,
        kwargs={},
        options={"log_context": carried} if carried else {},
    )
    try:
        broker().enqueue(message)
    except Exception as exc:
        log.warning("enqueue_failed", actor=task.name, error_type=type(exc).__name__)


def waiting(task: Task) -> int | None:
    """Messages in ``task``'s queue that no worker has fetched yet (not those a worker has
    prefetched or is running, nor delayed ones), or None when the broker cannot say."""
    current = broker()
    try:
        if isinstance(current, RedisBroker):
            # Dramatiq's Redis layout: a queue is the list "<namespace>:<queue>" of the ids
            # of its waiting messages (a worker that fetches one moves it to its own set).
            return int(current.client.llen(f"{current.namespace}:{task.queue}"))
        queue = current.queues.get(task.queue)
        return 0 if queue is None else int(queue.qsize())
    except Exception as exc:
        log.warning("queue_length_unknown", queue=task.queue, error_type=type(exc).__name__)
        return None


def wake_wave(wave_id: uuid.UUID) -> None:
    enqueue(RUN_WAVE, str(wave_id))
