"""Redis is an accelerator, not a single point of failure: with it down, a real server keeps
answering subscribes, restocks and orders; when it returns, the waiting work goes out."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from backinstock.runtime import Runtime
from tests.conversions.helpers import order_body
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import outbox_count, post_level, wait_for_outbox
from tests.server import BackinstockProcess, RedisServer, ServerProcess
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio

FAST = {
    "BACKINSTOCK_SWEEP_INTERVAL_SECONDS": "0.5",
    "BACKINSTOCK_STALE_AFTER_SECONDS": "1",
    "BACKINSTOCK_LOG_LEVEL": "WARNING",
    # A Dramatiq consumer that lost Redis tries again after this many milliseconds (3000 by
    # default): the wait between Redis' return and the work going out, and the wait of a
    # stop that comes while a consumer sleeps it off.
    "dramatiq_restart_delay": "200",
}


def _subscription(i: int, sku: str = "SKU-1") -> dict[str, object]:
    return subscription_body(sku=sku, channel="email", contact=f"outage{i}@mailbox.example")


async def test_api_answers_while_redis_is_down_and_work_resumes_when_it_returns(
    api_keys: dict[str, str],
    runtime: Runtime,
    private_redis: RedisServer,
    tmp_path: Path,
) -> None:
    env = {**FAST, "BACKINSTOCK_REDIS_URL": private_redis.url}
    worker = BackinstockProcess(
        ["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log"
    )
    worker.start()  # it starts up while the server does
    try:
        with ServerProcess(env, tmp_path / "serve.log") as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                subscribe = bearer(api_keys["subscribe"])
                for i in range(3):
                    response = await client.post(
                        "/v1/subscriptions", json=_subscription(i), headers=subscribe
                    )
                    assert response.status_code == 201, response.text
                # The worker is up and consuming before the outage begins.
                warm_up = _subscription(99, sku="SKU-0")
                assert (
                    await client.post("/v1/subscriptions", json=warm_up, headers=subscribe)
                ).status_code == 201
                await post_level(client, api_keys["inventory"], 1, sku="SKU-0")
                assert await wait_for_outbox(runtime, 1, within=60) == 1

                private_redis.stop()
                codes = []
                for i in range(3, 8):
                    response = await client.post(
                        "/v1/subscriptions", json=_subscription(i), headers=subscribe
                    )
                    codes.append(response.status_code)
                repeat = await client.post(
                    "/v1/subscriptions", json=_subscription(0), headers=subscribe
                )
                assert codes == [201] * 5 and repeat.status_code == 200, repeat.text
                restock = await post_level(client, api_keys["inventory"], 20)
                assert restock.status_code == 202, restock.text
                assert restock.json()["waiting"] == 8
                order = await client.post(
                    "/v1/orders",
                    json=order_body(f"o-{uuid.uuid4().hex}", sku="SKU-2"),
                    headers=bearer(api_keys["inventory"]),
                )
                assert order.status_code == 201, order.text
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json() == {
                    "status": "degraded",
                    "checks": {"database": "ok", "broker": "unreachable"},
                }
                metrics = (await client.get("/metrics")).text
                assert "backinstock_redis_available 0.0" in metrics
                assert "backinstock_rate_limit_local_total" in metrics

                # Nothing can reach the workers meanwhile: once the worker's sweeper has found
                # the due wave and failed to enqueue it, the work still waits in the database.
                await _logged(tmp_path / "worker.log", "enqueue_failed")
                assert await outbox_count(runtime) == 1
                private_redis.start()
                assert await wait_for_outbox(runtime, 1 + 8, within=60) == 1 + 8
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["status"] == "ok"
    finally:
        worker.stop()
    log = (tmp_path / "serve.log").read_text()
    assert log.count("redis_unavailable") == 1, "one warning for the outage, not one a request"


async def _logged(log: Path, event: str, within: float = 60) -> None:
    """Wait until a subprocess has logged ``event``: proof that its code reached that point."""

    async def logged() -> bool:
        return event in await asyncio.to_thread(log.read_text, errors="replace")

    await eventually(logged, within, f"{log.name} logs {event}")
