"""A real scrape: Debian's Prometheus, on loopback, runs the repository's configuration and
alert rules (monitoring/, unchanged; only the target files are the test's) against a served
API and worker hosts while restocks are sent through the Twilio client to the suite's fake.

A 5,000-shopper wave, throttled at the client to last two and a half scrape intervals
(whatever the machine's speed, Prometheus scrapes it at least twice under way): Prometheus
shows the SMS sent rising to 5,000 (summed over the host's two Dramatiq processes), the
provider latency histogram, and the oldest-due gauge falling back to 0. Then a second wave,
whose worker host is stopped in the middle: the "pipeline stalled" expression turns true
and the alert is pending; a replacement host finishes it and the stall is over. The
worker's log lines join up by request id, wave id and notification id, and carry no contact.

The shipped rule needs 30 s without a message sent while one is due. Rather than wait them
out, the test moves the stalled wave's times 40 s into the past once its worker host is
stopped (the due messages' ``next_attempt_at`` and every ``sent_at``, the two figures the
rule's gauges are read from): the API's gauges, Prometheus' scrape and the shipped rule's
evaluation are the real ones, and what is left to wait is a scrape and an evaluation (5 s
each). Everything else is done while something else is under way (both waves' shoppers are
seeded while the worker host starts).

One test, PostgreSQL + Redis only (production's shape: workers are separate processes)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import Interval, literal, select, update

from backinstock.contacts import Channel
from backinstock.dispatch.models import Notification, Status
from backinstock.runtime import Runtime
from tests.conftest import BACKEND
from tests.crashkit import start_provider, until_settled
from tests.ops.shipped import MONITORING, scrape_seconds
from tests.restocks.helpers import at
from tests.restocks.seed import seed_waiting
from tests.server import BackinstockProcess, PrometheusServer, ServerProcess, free_port
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL + Redis workers")

SHOPPERS = 5_000
SECOND_WAVE = 1_000
STOP_AFTER = 200  # messages of the second wave accepted when the worker host is stopped
WITHIN = 600  # a deadline against a hang on a busy host, not a measure
SENT_SERIES = 'backinstock_messages_total{channel="sms",outcome="sent"}'
SENT = f"sum by (channel) ({SENT_SERIES})"
LATENCY_COUNT = 'backinstock_provider_call_seconds_count{channel="sms"}'
LATENCY_BUCKETS = 'backinstock_provider_call_seconds_bucket{channel="sms"}'


# The client's limit (across the host's processes) makes the first wave last 2.5 scrape
# intervals: a known time, not a size that a fast machine sends between two scrapes.
RATE = SHOPPERS / (2.5 * scrape_seconds())


def _rule(name: str) -> str:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    found = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    expr: str = found[0]["expr"]
    return expr


def _configure(directory: Path, api: str, workers: list[str]) -> Path:
    """The repository's configuration and rules as they are, and this test's targets."""
    config = directory / "monitoring"
    (config / "targets").mkdir(parents=True)
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(MONITORING / name, config / name)
    (config / "targets" / "api.json").write_text(json.dumps([{"targets": [api]}]))
    (config / "targets" / "workers.json").write_text(json.dumps([{"targets": workers}]))
    return config


def _worker(env: dict[str, str], tmp_path: Path, name: str, port: int) -> BackinstockProcess:
    args = ["worker", "--processes", "2", "--threads", "4", "--metrics-port", str(port)]
    args += ["--metrics-dir", str(tmp_path / f"{name}-metrics")]
    return BackinstockProcess(args, env, tmp_path / f"{name}.log")


def _value(result: list[dict[str, object]]) -> float:
    assert len(result) == 1, result
    sample = result[0]["value"]
    assert isinstance(sample, list)
    return float(sample[1])


async def test_prometheus_sees_a_wave_finish_then_a_stall(
    runtime: Runtime, api_keys: dict[str, str], tmp_path: Path
) -> None:
    provider = start_provider(Channel.SMS, rate=RATE, accept_delay=0)
    env = {**provider.env, "BACKINSTOCK_LOG_LEVEL": "INFO"}
    first_port, second_port = free_port(), free_port()
    first = _worker(env, tmp_path, "worker-1", first_port)
    second = _worker(env, tmp_path, "worker-2", second_port)
    api = ServerProcess(env, tmp_path / "api.log")
    prometheus: PrometheusServer | None = None
    request_id = f"live-{uuid.uuid4().hex}"
    try:
        # Prometheus first: it hands the targets it discovered to its scrapers 5 s after it
        # starts. The worker host starts, both waves' shoppers are seeded and the API starts
        # meanwhile.
        config = _configure(
            tmp_path,
            f"127.0.0.1:{api.port}",
            [f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"],
        )
        prometheus = PrometheusServer(config, tmp_path)
        prometheus.start()
        first.start()
        await seed_waiting(runtime, SHOPPERS, sku="SKU-1", channel=Channel.SMS)
        await seed_waiting(runtime, SECOND_WAVE, sku="SKU-2", channel=Channel.SMS)
        api.start()
        await eventually(
            lambda: bool(prometheus and prometheus.query('up{job="backinstock-worker"} == 1')),
            WITHIN,
            "Prometheus scrapes the worker host",
        )

        # The first wave, start to end.
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            answer = await _restock(client, api_keys, "SKU-1", SHOPPERS, request_id)
        assert answer.json()["first_wave"] == SHOPPERS
        await eventually(lambda: bool(provider.recipients()), WITHIN, "the wave has begun")
        shown = await asyncio.to_thread(_status)  # what the operator sees meanwhile
        wave = next(line for line in shown.splitlines() if "SKU-1" in line)
        assert f"/ {SHOPPERS}" in wave and "━" in wave, wave
        await eventually(
            lambda: len(set(provider.recipients())) >= SHOPPERS, WITHIN, "everyone is told"
        )
        await until_settled(runtime, WITHIN)
        assert len(provider.recipients()) == SHOPPERS, "nobody was told twice"

        def sent_in_prometheus() -> bool:
            result = prometheus.query(SENT) if prometheus else []
            return bool(result) and _value(result) == SHOPPERS

        await eventually(sent_in_prometheus, WITHIN, "Prometheus shows every SMS sent")
        samples = prometheus.query(f"{SENT_SERIES}[30m]")
        assert len(samples) == 1, samples
        values = [float(v) for _, v in samples[0]["values"]]  # type: ignore[union-attr]
        assert values == sorted(values) and values[-1] == SHOPPERS, values
        assert any(0 < v < SHOPPERS for v in values), f"never seen rising: {values}"

        calls = _value(prometheus.query(f"sum({LATENCY_COUNT})"))
        assert calls >= SHOPPERS
        median = _value(
            prometheus.query(f"histogram_quantile(0.5, sum by (le) ({LATENCY_BUCKETS}))")
        )
        assert math.isfinite(median) and median > 0

        def oldest_due_back_to_zero() -> bool:
            result = prometheus.query("backinstock_oldest_due_notification_age_seconds")
            return bool(result) and _value(result) == 0 if prometheus else False

        await eventually(oldest_due_back_to_zero, WITHIN, "the oldest-due gauge falls to 0")
        waited = prometheus.query(
            "max_over_time(backinstock_oldest_due_notification_age_seconds[30m])"
        )
        assert _value(waited) > 0, "the wave's messages were seen waiting"
        first_message = 'backinstock_restock_first_message_seconds_count{job="backinstock-api"}'
        assert _value(prometheus.query(first_message)) == 1
        worker_only = prometheus.query(
            '{job="backinstock-worker",__name__=~"backinstock_restock.*"}'
        )
        assert not worker_only, "a worker host serves only what its processes count"

        # A second wave, and its worker host stopped in the middle of it.
        async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
            await _restock(client, api_keys, "SKU-2", SECOND_WAVE, f"live-{uuid.uuid4().hex}")
        await eventually(
            lambda: len(provider.recipients()) >= SHOPPERS + STOP_AFTER,
            WITHIN,
            "the second wave is under way",
        )
        first.terminate()  # SIGTERM: in-flight calls finish, the rest goes back to the queue
        stopped_at = len(provider.recipients())
        assert stopped_at < SHOPPERS + SECOND_WAVE, "the wave finished before the stop"
        dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
        for panel in dashboard["panels"]:  # every panel's query is one Prometheus runs
            for target in panel["targets"]:
                prometheus.query(target["expr"])

        await _as_if_stalled_for(runtime, seconds=40)
        stalled = _rule("BackinstockPipelineStalled")
        await eventually(
            lambda: bool(prometheus and prometheus.query(stalled)),
            WITHIN,
            "the pipeline-stalled expression turns true",
        )
        await eventually(
            lambda: bool(prometheus and prometheus.alert_states("BackinstockPipelineStalled")),
            WITHIN,
            "Prometheus evaluates the rule: the alert is pending",
        )
        assert len(provider.recipients()) == stopped_at, "nothing was sent while stalled"
        oldest = prometheus.query("max(backinstock_oldest_due_notification_age_seconds)")
        assert _value(oldest) > 30

        second.start()  # a replacement host finishes the wave
        # The second wave's shoppers have the first wave's numbers (another SKU): count
        # messages, not numbers.
        await eventually(
            lambda: len(provider.recipients()) >= SHOPPERS + SECOND_WAVE,
            WITHIN,
            "everyone of the second wave is told",
        )
        await eventually(
            lambda: not (prometheus and prometheus.query(stalled)), WITHIN, "the stall is over"
        )
    finally:
        servers: list[BackinstockProcess | PrometheusServer] = [first, second, api]
        servers += [prometheus] if prometheus is not None else []
        with ThreadPoolExecutor(len(servers)) as pool:  # each stop waits for its own exit
            list(pool.map(lambda server: server.stop(), servers))
        provider.stop()

    _assert_logs_join_up(tmp_path, request_id, await _a_notification(runtime, "SKU-1"))
    # The host summed its two Dramatiq processes: both counted, in files of their own.
    pids = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "worker-1-metrics").glob("counter_*.db")}
    assert len(pids) >= 2, pids


async def _as_if_stalled_for(runtime: Runtime, seconds: int) -> None:
    """The stopped host's wave as it would stand ``seconds`` later: its messages due that
    much longer, the last one sent that long ago (what the pipeline gauges read)."""
    back = literal(timedelta(seconds=seconds), Interval())
    async with runtime.sessions() as session, session.begin():
        await session.execute(
            update(Notification)
            .where(Notification.status == Status.PENDING)
            .values(next_attempt_at=Notification.next_attempt_at - back)
        )
        await session.execute(
            update(Notification)
            .where(Notification.sent_at.is_not(None))
            .values(sent_at=Notification.sent_at - back)
        )


def _status() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "backinstock", "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _restock(
    client: httpx.AsyncClient, api_keys: dict[str, str], sku: str, level: int, request_id: str
) -> httpx.Response:
    body = {"event_id": f"live-{sku}", "sku": sku, "available": level, "location": "tmall"}
    answer = await client.post(
        "/v1/restocks",
        json={**body, "occurred_at": at(0)},
        headers={"Authorization": f"Bearer {api_keys['inventory']}", "X-Request-ID": request_id},
    )
    assert answer.status_code == 202, answer.text
    return answer


async def _a_notification(runtime: Runtime, sku: str) -> tuple[str, str]:
    async with runtime.sessions() as session:
        query = select(Notification.id, Notification.wave_id).where(Notification.sku == sku)
        row = (await session.execute(query.limit(1))).one()
    return str(row[0]), str(row[1])


def _assert_logs_join_up(tmp_path: Path, request_id: str, notification: tuple[str, str]) -> None:
    notification_id, wave_id = notification
    api_log = (tmp_path / "api.log").read_text(errors="replace")
    worker_logs = "".join(
        (tmp_path / f"{name}.log").read_text(errors="replace") for name in ("worker-1", "worker-2")
    )
    lines = [json.loads(line) for line in worker_logs.splitlines() if line.startswith("{")]
    of_request = [line for line in lines if line.get("request_id") == request_id]
    assert request_id in api_log
    events = {line["event"] for line in of_request}
    assert {"wave_step_begun", "wave_chunk_planned", "batch_claimed", "provider_answered"} <= events
    assert all(line.get("wave_id") in (wave_id, None) for line in of_request)
    answered = [line for line in lines if line.get("notification_id") == notification_id]
    assert answered and answered[-1]["event"] == "provider_answered"
    assert answered[-1]["wave_id"] == wave_id and answered[-1]["outcome"] == "sent"
    assert not re.search(r"\+86138\d{8}", worker_logs + api_log), "a contact in the logs"
