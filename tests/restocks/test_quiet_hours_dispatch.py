"""SMS waits out the shopper's quiet hours; other channels do not; held messages leave in
queue order when the window ends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.restocks.helpers import outbox_count, outbox_recipients, post_level, subscribe_many
from tests.workers import settle, tick


async def test_sms_is_held_until_the_window_ends_then_sent_in_order(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    sms = await subscribe_many(client, key, 4, timezone="UTC")
    email = await subscribe_many(
        client, key, 1, start=50, channel="email", contact="late@mailbox.example"
    )
    this_hour = clock.now().replace(minute=0, second=0, microsecond=0)
    hour = this_hour.hour
    window = f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"  # covers the clock's now, in UTC
    start_worker(quiet_hours=window)
    await post_level(client, key, 10)
    await settle()

    assert await outbox_count(runtime) == 1, "the email leaves at once"
    held = await _held(runtime)
    assert {str(r[0]) for r in held} == set(sms), "each SMS is held, not sent"
    window_end = this_hour + timedelta(hours=2)
    assert {r[1] for r in held} == {window_end}
    assert {r[2] for r in held} == {"quiet_hours"}
    assert len(email) == 1

    clock.advance((window_end - clock.now()).total_seconds() - 60)
    await tick()
    assert await outbox_count(runtime) == 1, "a minute before the window ends, still held"

    clock.advance(60 + runtime.settings.waves.stale_after_seconds)
    async with runtime.sessions() as session:
        order = list(
            await session.scalars(
                select(Notification.subscription_id)
                .where(Notification.status == "pending")
                .order_by(Notification.next_attempt_at, Notification.id)
            )
        )
    assert [str(i) for i in order] == sms, "claims follow the queue order"
    await tick()
    assert await outbox_count(runtime) == 5, "the window over, the sweeper sends them"
    assert sorted((await outbox_recipients(runtime))[1:]) == sorted(sms)


async def _held(runtime: Runtime) -> list[Any]:
    async with runtime.sessions() as session:
        return list(
            await session.execute(
                select(
                    Notification.subscription_id,
                    Notification.next_attempt_at,
                    Notification.error,
                ).where(Notification.status == "pending", Notification.error == "quiet_hours")
            )
        )
