"""One restock followed through the logs: the webhook's request id and the wave id reach
every worker line of its work (through the broker message), and each message's line names
its notification and wave; none names a contact."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
import structlog
from sqlalchemy import select
from structlog.testing import capture_logs

from backinstock import worker as worker_module
from backinstock.dispatch.models import Notification
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.helpers import bearer
from tests.restocks.helpers import at, subscribe_many
from tests.workers import settle, tick


@contextlib.contextmanager
def at_info() -> Iterator[None]:
    """The suite logs at WARNING; these lines are INFO, as in production."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        yield
    finally:
        structlog.configure(**saved)


async def _restock(
    client: httpx.AsyncClient, key: str, event_id: str, available: int, request_id: str
) -> httpx.Response:
    body = {"event_id": event_id, "sku": "SKU-1", "available": available, "location": "tmall"}
    return await client.post(
        "/v1/restocks",
        json={**body, "occurred_at": at(0)},
        headers={**bearer(key), "X-Request-ID": request_id},
    )


async def test_a_restock_can_be_followed_by_request_wave_and_notification(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 3)
    await subscribe_many(client, key, 1, start=9, channel="email", contact="b@mailbox.example")
    start_worker()
    with at_info(), capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        answer = await _restock(client, key, "trail-1", 10, "trail-request-1")
        assert answer.status_code == 202
        await settle()
    async with runtime.sessions() as session:
        rows = list(await session.execute(select(Notification.id, Notification.wave_id)))
    assert len(rows) == 4
    wave_id = str(rows[0][1])

    worker = [line for line in lines if line.get("actor")]
    of_request = [line for line in worker if line.get("request_id") == "trail-request-1"]
    events = {line["event"] for line in of_request}
    assert {"wave_step_begun", "wave_chunk_planned", "batch_claimed", "provider_answered"} <= events
    assert {line.get("wave_id") for line in of_request} == {wave_id}
    for notification_id, _ in rows:
        answered = [
            line
            for line in of_request
            if line["event"] == "provider_answered"
            and line["notification_id"] == str(notification_id)
        ]
        assert len(answered) == 1 and answered[0]["outcome"] == "sent", notification_id
    text = repr(lines)
    assert not re.search(r"\+86138\d{8}|mailbox\.example", text), "a contact in the logs"


async def test_a_wave_the_sweeper_starts_logs_with_the_request_that_opened_it(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    """The webhook's wake-up is lost (a flushed broker), or a sweep finds the new wave first:
    the wave itself keeps the request's id, so its step's lines still carry it."""
    key = api_keys["all"]
    await subscribe_many(client, key, 3)
    with at_info(), capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
        answer = await _restock(client, key, "trail-2", 10, "trail-request-2")
        assert answer.status_code == 202
        worker_module.broker.flush_all()  # the wake-up, with the request's id, is gone
        start_worker()
        await tick()
    worker = [line for line in lines if line.get("actor")]
    events = {line["event"] for line in worker if line.get("request_id") == "trail-request-2"}
    assert {"wave_step_begun", "wave_chunk_planned", "batch_claimed", "provider_answered"} <= events
    answered = [line for line in worker if line["event"] == "provider_answered"]
    assert len(answered) == 3
    assert structlog.contextvars.get_contextvars().get("request_id") is None


@pytest.mark.parametrize(
    "given",
    [
        "r" * 64,  # the longest id admitted: kept as given
        "r" * 65,
        "trail\r\nX-Injected: 1",
        "trail\x00id",
        "=?utf-8?q?trail=0D=0A?=",
        "trail id",
        "",
    ],
    ids=["64", "65", "crlf", "nul", "encoded-word", "space", "empty"],
)
async def test_the_wave_keeps_only_an_admitted_request_id(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, given: str
) -> None:
    """The id reaches a column and the worker's log lines: a value the middleware does not
    admit is replaced by a generated one before anything stores it."""
    key = api_keys["all"]
    await subscribe_many(client, key, 1)
    # Through the ASGI transport each value reaches the middleware as given (CR/LF and
    # NUL included: no HTTP/1.1 encoder sits in between to refuse them).
    answer = await _restock(client, key, "trail-3", 1, given)
    assert answer.status_code == 202
    echoed = answer.headers["x-request-id"]
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", echoed)
    assert (echoed == given) == (given == "r" * 64)
    async with runtime.sessions() as session:
        stored = list(await session.scalars(select(Wave.request_id)))
    assert stored == [echoed]
