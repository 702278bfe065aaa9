"""Durability with real processes: SIGKILL the workers mid-wave (twice), flush the broker,
restart, and every shopper still gets exactly one message; two workers never double-send."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from tests.conftest import BACKEND
from tests.crashkit import until_settled
from tests.restocks.helpers import outbox_count, post_level, wait_for_outbox
from tests.restocks.seed import seed_waiting
from tests.server import BackinstockProcess, ServerProcess

FAST = {
    "BACKINSTOCK_CLAIM_LEASE_SECONDS": "3",
    "BACKINSTOCK_SWEEP_INTERVAL_SECONDS": "0.5",
    "BACKINSTOCK_STALE_AFTER_SECONDS": "1",
    "BACKINSTOCK_LOG_LEVEL": "WARNING",
}


async def _wait_until(runtime: Runtime, at_least: int, within: float = 120) -> int:
    count = await wait_for_outbox(runtime, at_least, within=within)
    if count < at_least:
        print("STALLED", await _state(runtime))
    return count


async def _state(runtime: Runtime) -> str:
    """What the database says when a wait times out: notification states and the waves."""
    from backinstock.restocks.models import Wave

    async with runtime.sessions() as session:
        by_status = list(
            await session.execute(
                select(Notification.status, Notification.error, func.count()).group_by(
                    Notification.status, Notification.error
                )
            )
        )
        waves = list(
            await session.execute(
                select(Wave.status, Wave.step, Wave.planned, Wave.target, Wave.lease_until)
            )
        )
    return f"notifications={by_status} waves={waves} now={datetime.now(UTC)}"


async def _assert_exactly_once(runtime: Runtime, shoppers: int) -> None:
    async with runtime.sessions() as session:
        messages = await session.scalar(select(func.count()).select_from(DevOutboxMessage))
        recipients = await session.scalar(
            select(func.count(func.distinct(Notification.subscription_id))).join(
                DevOutboxMessage, DevOutboxMessage.notification_id == Notification.id
            )
        )
        unsent = await session.scalar(select(func.count()).where(Notification.status != "sent"))
    assert (messages, recipients, unsent) == (shoppers, shoppers, 0)


@pytest.mark.skipif(BACKEND != "postgres", reason="production mode: PostgreSQL + Redis")
async def test_killed_workers_and_flushed_broker_lose_nothing_and_send_nothing_twice(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    shoppers = 5000
    await seed_waiting(runtime, shoppers)
    worker = BackinstockProcess(
        ["worker", "--processes", "1", "--threads", "4"], FAST, tmp_path / "worker.log"
    )
    worker.start()
    try:
        response = await post_level(client, api_keys["inventory"], shoppers)
        assert response.json()["first_wave"] == shoppers

        assert await _wait_until(runtime, 300) >= 300
        worker.kill()
        assert runtime.redis is not None
        await runtime.redis.flushdb()  # the broker forgets every queued message
        killed_at = await outbox_count(runtime)
        assert killed_at < shoppers, "the first kill must land mid-wave"
        worker.start()

        assert await _wait_until(runtime, killed_at + 500) >= killed_at + 500
        worker.kill()
        await runtime.redis.flushdb()
        assert await outbox_count(runtime) < shoppers, "the second kill must land mid-wave"
        # Two worker hosts at once from here on: disjoint claims, no double sends.
        second = BackinstockProcess(
            ["worker", "--processes", "1", "--threads", "4"], FAST, tmp_path / "worker2.log"
        )
        worker.start()
        second.start()
        try:
            assert await _wait_until(runtime, shoppers, within=180) == shoppers
            # Every message recorded and no claim held: nothing is left to send twice.
            await until_settled(runtime, within=120)
        finally:
            second.stop()
    finally:
        worker.stop()
    await _assert_exactly_once(runtime, shoppers)


@pytest.mark.skipif(BACKEND != "sqlite", reason="embedded mode: SQLite, in-process broker")
async def test_embedded_server_killed_mid_wave_resumes_after_restart(
    api_keys: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    shoppers = 10_000
    await seed_waiting(runtime, shoppers)
    server = ServerProcess(FAST, tmp_path / "serve.log")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            response = await post_level(client, api_keys["inventory"], shoppers)
            assert response.status_code == 202
        # Killed as soon as the restock is accepted, while the wave is being planned and
        # sent: waiting to see a first message first let the in-process outbox finish all
        # of them before the kill on a fast host. The in-process broker and its queued
        # messages die with the process; only the database knows what is owed.
        server.kill()
        killed_at = await outbox_count(runtime)
        assert killed_at < shoppers, "the kill must land mid-wave"
        server.start()
        assert await _wait_until(runtime, shoppers, within=180) == shoppers
        await until_settled(runtime, within=120)
    finally:
        server.stop()
    await _assert_exactly_once(runtime, shoppers)
