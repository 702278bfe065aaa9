"""SMS waits out the shopper's quiet hours; other channels do not; held messages leave in
queue order when the window ends."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from backinstock import db
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.restocks.helpers import outbox_count, post_level, subscribe_many, wait_for_outbox


async def test_sms_is_held_until_the_window_ends_then_sent_in_order(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    sms = await subscribe_many(client, key, 4, timezone="UTC")
    email = await subscribe_many(
        client, key, 1, start=50, channel="email", contact="late@mailbox.example"
    )
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hour = this_hour.hour
    window = f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"  # covers now, in UTC
    night_worker = start_worker(quiet_hours=window)
    await post_level(client, key, 10)

    assert await wait_for_outbox(runtime, 1) == 1  # the email leaves at once
    # The SMS may be claimed in a later batch than the email: wait until the worker has
    # decided all four (each one held, not sent).
    held = await _held(runtime, 4)
    assert {str(r[0]) for r in held} == set(sms)
    window_end = this_hour + timedelta(hours=2)
    assert {r[1] for r in held} == {window_end}
    assert {r[2] for r in held} == {"quiet_hours"}
    assert await outbox_count(runtime) == 1 and len(email) == 1

    # The window ends: here, a worker whose quiet hours are over, and the hold moved to the past.
    night_worker.stop()
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(Notification)
            .where(Notification.status == "pending")
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=5))
        )
    async with runtime.sessions() as session:
        order = list(
            await session.scalars(
                select(Notification.subscription_id)
                .where(Notification.status == "pending")
                .order_by(Notification.next_attempt_at, Notification.id)
            )
        )
    assert [str(i) for i in order] == sms, "claims follow the queue order"
    start_worker(quiet_hours="")
    assert await wait_for_outbox(runtime, 5, within=20) == 5


async def _held(runtime: Runtime, expected: int, within: float = 20) -> list[Any]:
    deadline = time.monotonic() + within
    while True:
        async with runtime.sessions() as session:
            held = list(
                await session.execute(
                    select(
                        Notification.subscription_id,
                        Notification.next_attempt_at,
                        Notification.error,
                    ).where(Notification.status == "pending", Notification.error == "quiet_hours")
                )
            )
        if len(held) >= expected or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.05)
