"""Restock fan-out on PostgreSQL + Redis: one POST /v1/restocks to N waiting shoppers.

Per round: a fresh database, N waiting SMS shoppers on one SKU seeded straight into it
(sealed and blind-indexed by the project's own code), the API and one worker host
(`backinstock worker`; `--hosts H` starts H of them, separate process trees sharing the
database and Redis) started, then one restock covering everyone. From the 202 it times
the first and the last dev-outbox message, samples the worker processes' RSS, and checks
that every shopper got exactly one message. The services are then stopped and a bare
script loop sends the same messages again (decrypt, render, seal, insert in batches of
200; no broker, no claiming) for a baseline; its bodies must equal the worker's.

    .venv/bin/python bench/fanout.py --sizes 10000,100000 --rounds 3 --write

With several hosts, each host's messages come from its own /metrics (`--metrics-port`:
``backinstock_messages_total``, summed over its processes): a host that sent none fails
the round's checks, as a duplicate does.

``--sink smtp`` takes the real client path instead of the dev outbox: the shoppers wait by
email, the workers send through the SMTP sender (its pooled connections, opened by
aiosmtplib, MAIL, RCPT and DATA pipelined) to a local relay (bench/smtp_sink.py, a process
of its own), and the times are the relay's. The bare loop then sends the same messages with
aiosmtplib's sendmail (the library's client, one command at a time) over as many
connections as the worker host has, with no broker, claims or status writes, to a fresh
relay.

    .venv/bin/python bench/fanout.py --sink smtp --sizes 100000,1000000 --rounds 1 --write
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import psycopg2
import redis
from benchlib import (
    BENCH,
    PG,
    RESULTS,
    cpu_seconds,
    free_ports,
    fresh_database,
    library_smtp,
    source_state,
    write_results,
)

from backinstock import contacts
from backinstock.config import CryptoSettings, Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys, Sealed, load_keys, new_key_spec
from backinstock.db import new_id
from backinstock.dispatch.render import MessageContext, render
from backinstock.identity import (
    CLICK_TOKEN,
    SHOPPER_PAGE_TOKEN,
    UNSUBSCRIBE_TOKEN,
    contact_aad,
    outbox_aad,
    profile_aad,
)
from backinstock.senders.base import OutgoingMessage
from backinstock.senders.outbox import open_content, seal_content

OUT = BENCH / "out"  # service logs (git-ignored)
DATABASE = "backinstock_fanout"
DSN = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
REDIS_URL = "redis://127.0.0.1:6379/12"  # flushed before every round
BACKINSTOCK = str(Path(sys.executable).parent / "backinstock")  # the venv's console script
SKU = "FANOUT-RED-TEE-M"
PRODUCT = ("红色T恤 M", "https://shop.example/p/red-tee-m")
SEED_BATCH = 20_000
BARE_BATCH = 200  # = dispatch.BATCH
FIRST_TARGET_S = 1.0
LAST_TARGET_S, LAST_TARGET_N = 30.0, 100_000
SMTP_TARGET_S, SMTP_TARGET_N = 300.0, 1_000_000  # through the SMTP sender to a local relay
SMTP_FROM = "Shop <shop@shop.example>"
SMTP_CONNECTIONS = 4  # per worker process: the sender's default (smtp_connections)
RSS_TARGET_MB, RSS_FLAT = 250.0, 1.2  # "flat": largest size's peak <= 1.2x the smallest's

SUB_COLUMNS = [
    "id", "sku", "channel", "contact_key_id", "contact_blob", "contact_index",
    "profile_key_id", "profile_blob", "locale", "timezone", "customer_id", "priority",
    "priority_rank", "source", "consent_text_version", "status", "notification_count",
    "created_at", "updated_at",
]  # fmt: skip


@dataclass
class Round:
    size: int
    index: int
    seed_s: float = 0.0
    post_ms: float = 0.0  # the POST's own latency, request to 202
    first_s: float = 0.0  # 202 -> first dev_outbox row
    last_s: float = 0.0  # 202 -> last (N-th) dev_outbox row
    recorded_s: float = 0.0  # 202 -> last notification recorded 'sent'
    planned_first_s: float = 0.0  # 202 -> first notification row (the wave's first chunk)
    planned_last_s: float = 0.0  # 202 -> last notification row (the wave fully written)
    rss_idle_mb: list[float] = field(default_factory=list)  # per worker process, before POST
    rss_peak_mb: list[float] = field(default_factory=list)  # per worker process, VmHWM
    worker_cpu_s: float = 0.0  # user+system CPU of the worker processes, 202 -> last
    api_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0  # all postgres processes
    quiet_wait_s: float = 0.0  # waited for the host to calm down before the POST
    sink_cpu_s: float = 0.0  # the SMTP relay's own CPU, 202 -> last (--sink smtp)
    other_cpu_s: float = 0.0  # CPU used by everything else on the host (other jobs), 202 -> last
    host_busy: float = 0.0  # share of all cores busy, 202 -> last
    bare_s: float = 0.0
    bare_cpu_s: float = 0.0  # the bare loop's own CPU (this process), start -> end
    bare_pg_cpu_s: float = 0.0  # all postgres processes, the same span
    host_msgs: list[int] = field(default_factory=list)  # messages sent, per worker host
    writer_hosts: int = 0  # leading hosts on the waves queue alone (--writer-host): send none
    host_cpu_s: list[float] = field(default_factory=list)  # per worker host, 202 -> last
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.size / self.last_s

    @property
    def ratio(self) -> float:
        return self.last_s / self.bare_s

    @property
    def cpu_s(self) -> float:
        """What the wave cost the host: workers, API and PostgreSQL (the sink left out)."""
        return self.worker_cpu_s + self.api_cpu_s + self.pg_cpu_s

    @property
    def bare_total_cpu_s(self) -> float:
        return self.bare_cpu_s + self.bare_pg_cpu_s

    @property
    def smallest_share(self) -> float:
        """The least busy sending host's part of the wave (1.0 with one host)."""
        senders = self.host_msgs[self.writer_hosts :]
        return min(senders) * len(senders) / self.size

    @property
    def rss_max(self) -> float:
        return max(self.rss_peak_mb)

    @property
    def rss_sum(self) -> float:
        return sum(self.rss_peak_mb)


# ---------------------------------------------------------------- setup


def service_env(relay: SmtpRelay | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env.update(
        BACKINSTOCK_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
        BACKINSTOCK_REDIS_URL=REDIS_URL,
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_ALLOWED_LINK_HOSTS="shop.example",
        BACKINSTOCK_LOG_LEVEL="WARNING",
        BACKINSTOCK_QUIET_HOURS="",  # off: the bench must not depend on the time of day
    )
    if relay is not None:  # the email sender is configured: messages leave by SMTP
        env.update(
            BACKINSTOCK_SMTP_HOST="127.0.0.1",
            BACKINSTOCK_SMTP_PORT=str(relay.port),
            BACKINSTOCK_SMTP_STARTTLS="false",  # loopback: no certificate to present
            BACKINSTOCK_SMTP_FROM=SMTP_FROM,
            BACKINSTOCK_SMTP_CONNECTIONS=str(SMTP_CONNECTIONS),
        )
    return env


def cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([BACKINSTOCK, *argv], env=env, cwd=OUT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"backinstock {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def contact(channel: Channel, i: int) -> str:
    """Shopper i's contact, as contacts.normalize writes it (checked in seed)."""
    if channel is Channel.EMAIL:
        return f"shopper{i}@mailbox.example"
    return f"+86138{i:08d}"  # E.164


async def seed(keys: Keys, size: int, channel: Channel) -> float:
    """N waiting shoppers on SKU, built as _NewSubscription.build builds them."""
    typed = "shopper7@Mailbox.Example" if channel is Channel.EMAIL else "138 0000 0007"
    assert contacts.normalize(channel, typed) == contact(channel, 7)
    started = time.perf_counter()
    base = datetime.now(UTC) - timedelta(days=1)
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            "INSERT INTO products (sku, name, url, image_url, updated_at) "
            "VALUES ($1, $2, $3, NULL, now())",
            SKU, *PRODUCT,
        )  # fmt: skip
        for start in range(0, size, SEED_BATCH):
            rows = []
            for i in range(start, min(size, start + SEED_BATCH)):
                sub_id, value = new_id(), contact(channel, i)
                sealed = keys.cipher.seal(value, contact_aad(sub_id))
                index = keys.blind_index.digest(contacts.index_form(channel, value))
                profile = json.dumps({"name": f"顾客{i}", "consent_ip": None}, ensure_ascii=False)
                prof = keys.cipher.seal(profile, profile_aad(sub_id))
                created = base + timedelta(microseconds=i)  # strictly increasing: queue order
                rows.append((
                    sub_id, SKU, channel.value, sealed.key_id, sealed.blob, index,
                    prof.key_id, prof.blob, "zh-CN", "Asia/Shanghai", None, "standard", 1,
                    "bench", "v1", "waiting", 0, created, created,
                ))  # fmt: skip
            await conn.copy_records_to_table("subscriptions", records=rows, columns=SUB_COLUMNS)
        await conn.execute("VACUUM ANALYZE subscriptions")
    finally:
        await conn.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


ROUND_TAG = [""]  # "-<size>-<round>": each round's logs are kept, not overwritten


def spawn(name: str, argv: list[str], env: dict[str, str]) -> Service:
    log = OUT / f"fanout-{name}{ROUND_TAG[0]}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, env=env, cwd=OUT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Service(name, proc, log)


def stop(service: Service) -> None:
    """SIGTERM the service's process group, SIGKILL it if it lingers."""
    if service.proc.poll() is None:
        try:
            os.killpg(service.proc.pid, signal.SIGTERM)
            service.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError):  # leftovers (a child outliving its parent)
        os.killpg(service.proc.pid, signal.SIGKILL)


@dataclass
class WorkerHost:
    """One `backinstock worker` process tree, with its processes' metrics on its own port."""

    metrics_port: int | None
    service: Service = field(init=False)

    def messages_sent(self) -> int | None:
        """backinstock_messages_total{outcome="sent"}, summed over the host's processes
        (None without a metrics port: the only host, which sent them all)."""
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return round(sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("backinstock_messages_total{") and 'outcome="sent"' in line
        ))  # fmt: skip


class SmtpRelay:
    """bench/smtp_sink.py in a process of its own: the relay the SMTP sender talks to."""

    def __init__(self) -> None:
        self.repeats: dict[str, int] = {}  # as of the last delivered(): see smtp_sink.py
        self.port, self.stats_port = free_ports(2)
        argv = [sys.executable, str(BENCH / "smtp_sink.py"), "--port", str(self.port),
                "--stats-port", str(self.stats_port)]  # fmt: skip
        self.service = spawn("smtp-sink", argv, dict(os.environ))
        atexit.register(self.stop)  # also when the round fails before its own stop
        deadline = time.monotonic() + 30
        while "ready" not in self.service.log.read_text(errors="replace"):
            if self.service.proc.poll() is not None or time.monotonic() > deadline:
                fail(self.service, "the SMTP sink did not start")
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=10) as conn:
            answer: dict[str, Any] = json.loads(conn.makefile().readline())
        return answer

    # What measure() reads, as it reads the dev outbox: (first, count, last).
    def first(self) -> float | None:
        first: float | None = self.stats()["first"]
        return first

    def count(self) -> int:
        return int(self.stats()["messages"])

    def last(self) -> float:
        return float(self.stats()["last"])

    def delivered(self) -> tuple[int, int]:
        """(messages, distinct recipients)."""
        stats = self.stats()
        self.repeats = stats["repeats"]
        return stats["messages"], stats["distinct"]

    def stop(self) -> None:
        stop(self.service)


def count_interval(size: int) -> float:
    """Seconds between two counts of what has arrived: 0.25 up to 100,000 messages, then
    growing with N to 2.5 at 1,000,000. When a count read the whole dev outbox, counting
    every 250 ms through a 1,000,000 wave took 31 s of PostgreSQL's time (a tenth of what
    the wave was charged, and CPU taken from it); Outbox.count now reads it once, at the
    end, but the unsent messages it counts till then can be a large backlog. The times
    reported come from the rows, so a later count only ends the round's CPU window a
    little later."""
    return min(2.5, max(0.25, size / 400_000))


class Outbox:
    """The dev outbox's rows (every message, when no provider is configured)."""

    def __init__(self, cur: Any, size: int) -> None:
        self.cur = cur
        self.size = size

    def first(self) -> float | None:
        self.cur.execute("SELECT min(created_at) FROM dev_outbox")
        first = self.cur.fetchone()[0]
        return None if first is None else float(first.timestamp())

    def count(self) -> int:
        """How many messages have arrived: exact once none can be missing, else a figure
        below it. Polled every count_interval(N) through the wave, a count of the dev outbox
        read the whole growing table each time, CPU that PostgreSQL took from the wave and
        the bare loop never pays (about 1 s of a 100,000-shopper wave's 35). So the exact
        count waits until every message is planned (the wave's row) and none is open (the
        work index, holding only what is still unsent); till then, planned less open."""
        self.cur.execute("SELECT coalesce(sum(planned), 0) FROM waves")
        planned = int(self.cur.fetchone()[0])
        if planned < self.size:
            return 0
        self.cur.execute(
            "SELECT count(*) FROM notifications WHERE status IN ('pending', 'sending', 'inflight')"
        )
        unsent = int(self.cur.fetchone()[0])
        if unsent:
            return planned - unsent
        self.cur.execute("SELECT count(*) FROM dev_outbox")
        return int(self.cur.fetchone()[0])

    def last(self) -> float:
        self.cur.execute("SELECT max(created_at) FROM dev_outbox")
        return float(self.cur.fetchone()[0].timestamp())

    def delivered(self) -> tuple[int, int]:
        """(messages, distinct notifications)."""
        self.cur.execute("SELECT count(*), count(DISTINCT notification_id) FROM dev_outbox")
        rows, distinct = self.cur.fetchone()
        return rows, distinct


Delivered = SmtpRelay | Outbox


def fail(service: Service, why: str) -> None:
    tail = service.log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{service.name}: {why}\n--- {service.log} (tail) ---\n{tail}")


def wait_api(api: Service, port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.proc.poll() is not None:
            fail(api, "exited during startup")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    fail(api, "not ready (/readyz) within 60 s")


def wait_worker(worker: Service, processes: int) -> list[int]:
    """Until every dramatiq worker process has logged that it is ready for action."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            fail(worker, "exited during startup")
        ready = worker.log.read_text(errors="replace").count("is ready for action")
        kids = worker_processes(worker.proc.pid)
        if ready >= processes and len(kids) >= processes:
            return kids
        time.sleep(0.2)
    fail(worker, "worker processes not ready within 60 s")
    raise AssertionError  # unreachable


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def worker_processes(pid: int) -> list[int]:
    """A host's dramatiq worker processes: its children that run a pool of threads (a
    metrics exporter, forked beside them with --metrics-port, runs two)."""
    return [kid for kid in children(pid) if status_mb_or_count(kid, "Threads") > 2]


POLL_SEEN: set[str] = set()  # dramatiq_worker_timeout in the worker processes' environments


def worker_timeout_of(pid: int) -> str:
    """The dramatiq_worker_timeout a worker process started with ("unset": dramatiq's 1000)."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"dramatiq_worker_timeout="):
            return item.split(b"=", 1)[1].decode()
    return "unset"


def status_mb(pid: int, field_name: str) -> float:
    return status_mb_or_count(pid, field_name) / 1024


def status_mb_or_count(pid: int, field_name: str) -> int:
    """A field of /proc/<pid>/status: kB for sizes, a count for Threads."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise LookupError(field_name)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every postgres process (server and backends) by pid, each with the
    CPU of its children that have exited: a backend whose connection closed is counted in
    the postmaster's (the bare loop closes its connections before it is measured)."""
    result = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    result[int(entry.name)] = cpu_seconds(int(entry.name), children=True)
            except OSError:
                continue
    return result


def postgres_cpu_since(before: dict[int, float]) -> float:
    """PostgreSQL's CPU since ``before``: totals, so that a backend that exited in between
    counts what it used after ``before`` (through its parent's reaped time) and no more."""
    return sum(postgres_cpu().values()) - sum(before.values())


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def wait_quiet(limit: float = 180, busy_max: float = 0.3) -> float:
    """Wait (up to ``limit`` s) until under ``busy_max`` of the host's CPU is busy over 2 s:
    other jobs share this host. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        t0 = host_ticks()
        time.sleep(2)
        t1 = host_ticks()
        if (t1[0] - t0[0]) / max(t1[1] - t0[1], 1) < busy_max:
            break
    return time.monotonic() - started - 2


def host_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# ---------------------------------------------------------------- the fan-out


def post_restock(port: int, key: str, size: int, event_id: str) -> tuple[float, float]:
    """POST the restock; returns (wall-clock time of the 202, request latency in ms)."""
    body = {"event_id": event_id, "sku": SKU, "available": size, "location": "main"}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/restocks",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            status, answer = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"restock answered {exc.code}: {exc.read()[:500]!r}") from None
    at = time.time()
    latency = 1000 * (time.perf_counter() - started)
    if status != 202 or answer["first_wave"] != size or answer["waiting"] != size:
        raise RuntimeError(f"restock answered {status}: {answer}")
    return at, latency


def measure(
    rnd: Round, cur: Any, hosts: list[WorkerHost], api: Service, port: int, key: str,
    timeout: float, delivered: Delivered,
) -> None:  # fmt: skip
    services = [*(host.service for host in hosts), api]
    per_host = [worker_processes(host.service.proc.pid) for host in hosts]
    kids = [pid for pids in per_host for pid in pids]
    rnd.rss_idle_mb = [status_mb(pid, "VmRSS") for pid in kids]
    host_cpu0 = [sum(cpu_seconds(pid) for pid in pids) for pids in per_host]
    cpu0 = sum(host_cpu0), cpu_seconds(api.proc.pid)
    rnd.quiet_wait_s = wait_quiet()
    relay = delivered.service.proc.pid if isinstance(delivered, SmtpRelay) else None
    sink0 = cpu_seconds(relay) if relay else 0.0
    host0, pg0, self0 = host_ticks(), postgres_cpu(), own_cpu()
    at, rnd.post_ms = post_restock(port, key, rnd.size, f"r-{rnd.size}-{rnd.index}")
    deadline = time.monotonic() + timeout
    first = None
    while first is None:  # cheap while nothing has arrived: poll every 50 ms
        first = delivered.first()
        check_alive(services, deadline, rnd)
        time.sleep(0.05)
    count = 0
    while count < rnd.size:  # counting costs more, and more with N (the figure comes from rows)
        time.sleep(count_interval(rnd.size))
        count = delivered.count()
        check_alive(services, deadline, rnd, count)
    host1, rnd.pg_cpu_s = host_ticks(), postgres_cpu_since(pg0)
    rnd.sink_cpu_s = cpu_seconds(relay) - sink0 if relay else 0.0
    rnd.host_cpu_s = [
        sum(cpu_seconds(pid) for pid in pids) - before
        for pids, before in zip(per_host, host_cpu0, strict=True)
    ]
    rnd.worker_cpu_s = sum(rnd.host_cpu_s)
    rnd.api_cpu_s = cpu_seconds(api.proc.pid) - cpu0[1]
    rnd.host_busy = (host1[0] - host0[0]) / max(host1[1] - host0[1], 1)
    busy_s = (host1[0] - host0[0]) / os.sysconf("SC_CLK_TCK")
    ours = rnd.worker_cpu_s + rnd.api_cpu_s + rnd.pg_cpu_s + rnd.sink_cpu_s + own_cpu() - self0
    rnd.other_cpu_s = max(busy_s - ours, 0.0)
    pending = 1
    while pending:
        cur.execute("SELECT count(*) FROM notifications WHERE status <> 'sent'")
        pending = cur.fetchone()[0]
        check_alive(services, deadline, rnd)
        time.sleep(0.1)
    rnd.rss_peak_mb = [status_mb(pid, "VmHWM") for pid in kids]
    rnd.first_s = first - at
    rnd.last_s = delivered.last() - at
    cur.execute("SELECT max(sent_at), min(created_at), max(created_at) FROM notifications")
    recorded, planned_first, planned_last = cur.fetchone()
    rnd.recorded_s = recorded.timestamp() - at
    rnd.planned_first_s = planned_first.timestamp() - at
    rnd.planned_last_s = planned_last.timestamp() - at


def check_alive(services: list[Service], deadline: float, rnd: Round, n: int = 0) -> None:
    for service in services:
        if service.proc.poll() is not None:
            fail(service, "exited during the fan-out")
    if time.monotonic() > deadline:
        fail(services[0], f"N={rnd.size}: only {n} messages before the timeout")


def check(cur: Any, size: int, delivered: Delivered) -> dict[str, Any]:
    rows, distinct = delivered.delivered()
    cur.execute("SELECT status, count(*) FROM notifications GROUP BY status ORDER BY status")
    statuses = dict(cur.fetchall())
    # Messages a lapsed claim left in doubt (settled by their channel's policy): none is
    # expected without a crash; with one, a second copy is the policy's resend.
    cur.execute("SELECT in_doubt, count(*) FROM notifications WHERE in_doubt IS NOT NULL "
                "GROUP BY in_doubt ORDER BY in_doubt")  # fmt: skip
    in_doubt = dict(cur.fetchall())
    cur.execute("SELECT count(DISTINCT subscription_id) FROM notifications")
    shoppers = cur.fetchone()[0]
    cur.execute(
        "SELECT count(*) FROM subscriptions WHERE status = 'notified' AND notification_count = 1"
    )
    notified = cur.fetchone()[0]
    result = {
        "messages": rows,
        "distinct": distinct,  # notifications (dev outbox) or recipients (SMTP)
        "statuses": statuses,
        "in_doubt": in_doubt,
        "shoppers_told": shoppers,
        "subscriptions_notified": notified,
    }
    result["ok"] = rows == distinct == shoppers == notified == size and statuses == {"sent": size}
    return result


# ---------------------------------------------------------------- the bare loop


BARE_READ = """
SELECT n.id, n.level, n.queue_size, s.id, s.sku, s.channel, s.locale,
       s.contact_key_id, s.contact_blob, s.profile_key_id, s.profile_blob, p.name, p.url
FROM notifications n
JOIN subscriptions s ON s.id = n.subscription_id
LEFT JOIN products p ON p.sku = n.sku
WHERE n.id > $1
ORDER BY n.id
LIMIT $2
"""
BARE_INSERT = """
INSERT INTO dev_outbox (id, notification_id, channel, recipient_masked, recipient_key_id,
                        recipient_blob, content_key_id, content_blob, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""


def bare_message(keys: Keys, base: str, row: Any) -> OutgoingMessage:
    """One notification row (BARE_READ) as the message the worker sends: contact and name
    decrypted, links signed, rendered."""
    nid, level, queue_size, sid, sku, channel, locale, ckid, cblob, pkid, pblob, pname, _ = row
    to = keys.cipher.open(Sealed(ckid, cblob), contact_aad(sid))
    name = None
    if pblob is not None:
        name = json.loads(keys.cipher.open(Sealed(pkid, pblob), profile_aad(sid)))
        name = name.get("name") or None
    context = MessageContext(
        name=name,
        product_name=pname or sku,
        link=f"{base}/r/{keys.tokens.sign(CLICK_TOKEN, nid)}",
        unsubscribe_url=f"{base}/u/{keys.tokens.sign(UNSUBSCRIBE_TOKEN, sid)}",
        page_url=f"{base}/s/{keys.tokens.sign(SHOPPER_PAGE_TOKEN, sid)}",
        level=level,
        queue_size=queue_size,
    )
    rendered = render(channel, locale, context)
    return OutgoingMessage(
        notification_id=nid, channel=channel, to=to,
        to_masked=contacts.mask(Channel(channel), to), text=rendered.text,
        subject=rendered.subject, html=rendered.html, link=context.link,
        unsubscribe_url=context.unsubscribe_url,
    )  # fmt: skip


async def bare_batches(keys: Keys, base_url: str) -> AsyncIterator[list[OutgoingMessage]]:
    """Every notification's message, 200 at a time, in id order."""
    conn = await asyncpg.connect(DSN)
    base = base_url.rstrip("/")
    after = uuid.UUID(int=0)
    try:
        while batch := await conn.fetch(BARE_READ, after, BARE_BATCH):
            yield [bare_message(keys, base, row) for row in batch]
            after = batch[-1][0]
    finally:
        await conn.close()


def bare_outbox_rows(keys: Keys, messages: list[OutgoingMessage]) -> list[tuple[Any, ...]]:
    """The dev outbox's rows for these messages (BARE_INSERT's values), recipient and
    content sealed as the dev outbox seals them."""
    rows = []
    for message in messages:
        row_id = new_id()
        sealed = keys.cipher.seal(message.to, outbox_aad(row_id.bytes))
        content = seal_content(keys.cipher, row_id, message.subject, message.text)
        rows.append((
            row_id, message.notification_id, message.channel, message.to_masked,
            sealed.key_id, sealed.blob, content["content_key_id"], content["content_blob"],
            datetime.now(UTC),
        ))  # fmt: skip
    return rows


async def bare_loop(keys: Keys, base_url: str) -> tuple[float, int]:
    """The same messages, one process, no broker, no claims: read 200, decrypt, render,
    seal (recipient and content, as the dev outbox does), insert 200. Returns (seconds,
    rows written)."""
    conn = await asyncpg.connect(DSN)
    written = 0
    try:
        started = time.perf_counter()
        async for batch in bare_batches(keys, base_url):
            rows = bare_outbox_rows(keys, batch)
            await conn.executemany(BARE_INSERT, rows)
            written += len(rows)
        return time.perf_counter() - started, written
    finally:
        await conn.close()


async def bare_smtp_loop(keys: Keys, base_url: str, relay: SmtpRelay, connections: int) -> float:
    """The same messages by SMTP, one process, no broker, no claims, no status writes:
    read 200, decrypt, render (backinstock.senders.mime, as the sender does), send them
    over ``connections`` aiosmtplib connections to ``relay``. Returns the seconds."""
    async with library_smtp(relay.port, connections, SMTP_FROM) as send:
        started = time.perf_counter()
        async for batch in bare_batches(keys, base_url):
            await asyncio.gather(*(send(message) for message in batch))
        seconds = time.perf_counter() - started
    return seconds


Opened = dict[str, tuple[str, str]]  # notification id -> (masked recipient, body)


def opened_outbox(cur: Any, keys: Keys) -> Opened:
    """The dev outbox's messages, opened with the service's own helper (bodies are sealed
    with a random nonce, so SQL cannot compare them)."""
    cur.execute(
        "SELECT id, notification_id, recipient_masked, content_key_id, content_blob FROM dev_outbox"
    )
    opened: Opened = {}
    for row_id, nid, masked, key_id, blob in cur.fetchall():
        row = SimpleNamespace(id=uuid.UUID(str(row_id)), content_key_id=key_id,
                              content_blob=bytes(blob))  # fmt: skip
        opened[str(nid)] = (masked, open_content(keys.cipher, row).body)
    return opened


def keep_worker_bodies(cur: Any, keys: Keys) -> Opened:
    kept = opened_outbox(cur, keys)
    cur.execute("TRUNCATE dev_outbox")
    cur.execute("VACUUM ANALYZE dev_outbox")
    return kept


def same_messages(cur: Any, keys: Keys, worker_messages: Opened) -> int:
    bare = opened_outbox(cur, keys)
    differ = [nid for nid, message in bare.items() if worker_messages.get(nid) != message]
    if differ:  # shown, so that a failed check says how the bodies differ
        print(f"first of {len(differ)} different messages:\n  worker: "
              f"{worker_messages.get(differ[0])!r}\n  bare:   {bare[differ[0]]!r}",
              file=sys.stderr)  # fmt: skip
    return len(bare) - len(differ)


# ---------------------------------------------------------------- one round


def one_round(rnd: Round, args: argparse.Namespace, pg_info: dict[str, str]) -> None:
    pg_info.update(fresh_database(DATABASE))
    ROUND_TAG[0] = f"-{rnd.size}-{rnd.index}"
    relay = SmtpRelay() if args.sink == "smtp" else None
    env = service_env(relay)
    os.environ.update(env)  # this process seals, opens and signs with the same keys
    keys = load_keys(CryptoSettings(), production=True)
    cli(env, "migrate")
    key = cli(env, "keys", "create", "--name", "bench", "--scope", "inventory", "--scope",
              "admin").strip().splitlines()[-1]  # fmt: skip
    flush_redis()
    channel = Channel.EMAIL if relay else Channel.SMS
    rnd.seed_s = asyncio.run(seed(keys, rnd.size, channel))
    port, *metrics_ports = free_ports(1 + args.hosts)
    services: list[Service] = []
    conn = psycopg2.connect(dbname=DATABASE, **PG)
    conn.autocommit = True
    try:
        api = spawn("api", [BACKINSTOCK, "serve", "--host", "127.0.0.1", "--port", str(port)], env)
        services.append(api)
        worker_argv = [BACKINSTOCK, "worker", "--processes", str(args.processes),
                       "--threads", str(args.threads)]  # fmt: skip
        if args.idle_poll_ms:  # the CLI sets dramatiq_worker_timeout from --poll-ms itself
            worker_argv += ["--poll-ms", str(args.idle_poll_ms)]
        # One host runs as before; several each serve their metrics, to count their messages.
        hosts = [WorkerHost(p if args.hosts > 1 else None) for p in metrics_ports]
        rnd.writer_hosts = 1 if args.writer_host else 0
        for n, host in enumerate(hosts, start=1):
            argv = worker_argv + (["--metrics-port", str(host.metrics_port)]
                                  if host.metrics_port else [])  # fmt: skip
            if args.writer_host:  # the first host writes the waves, the others send
                argv += ["--queue", "waves" if n == 1 else "dispatch"]
            host.service = spawn("worker" if args.hosts == 1 else f"worker{n}", argv, env)
            services.append(host.service)
        wait_api(api, port)
        for host in hosts:
            for pid in wait_worker(host.service, args.processes):
                POLL_SEEN.add(worker_timeout_of(pid))
        time.sleep(1.0)  # let the sweepers' first ticks and the imports settle
        with conn.cursor() as cur:
            timeout = args.timeout or 120 + rnd.size / 250  # fails below ~250 msg/s
            measure(rnd, cur, hosts, api, port, key, timeout, relay or Outbox(cur, rnd.size))
        sent = [host.messages_sent() for host in hosts]
        rnd.host_msgs = [rnd.size if n is None else n for n in sent]
        for service in reversed(services):
            stop(service)
        base_url = Settings.from_env().core.public_base_url
        with conn.cursor() as cur:
            rnd.checks = check(cur, rnd.size, relay or Outbox(cur, rnd.size))
        if relay is not None:
            rnd.checks["repeats"] = relay.repeats
            bare_ok = bare_by_smtp(rnd, relay, keys, base_url, args.processes * args.hosts)
        else:
            bare_ok = bare_into_outbox(rnd, conn, keys, base_url)
    finally:
        for service in reversed(services):  # after a failure: nothing is left running
            stop(service)
        if relay is not None:
            relay.stop()
        conn.close()
    checks = rnd.checks
    checks["messages_per_host"] = rnd.host_msgs
    senders = rnd.host_msgs[rnd.writer_hosts :]
    every_host_sent = sum(rnd.host_msgs) == rnd.size and min(senders) > 0
    checks["ok"] = checks["ok"] and bare_ok and every_host_sent


@contextlib.contextmanager
def bare_cpu(rnd: Round) -> Iterator[None]:
    """The bare loop's CPU and PostgreSQL's while it runs: what the same messages cost
    the host without the pipeline (the wave's own figure is ``Round.cpu_s``)."""
    own0, pg0 = own_cpu(), postgres_cpu()
    yield
    rnd.bare_cpu_s = own_cpu() - own0
    rnd.bare_pg_cpu_s = postgres_cpu_since(pg0)


def bare_into_outbox(rnd: Round, conn: Any, keys: Keys, base_url: str) -> bool:
    """The bare loop into an emptied dev outbox; its bodies must equal the worker's."""
    with conn.cursor() as cur:
        worker_messages = keep_worker_bodies(cur, keys)
    with bare_cpu(rnd):
        rnd.bare_s, written = asyncio.run(bare_loop(keys, base_url))
    with conn.cursor() as cur:
        rnd.checks["bare_rows"] = written
        rnd.checks["bare_same_bodies"] = same_messages(cur, keys, worker_messages)
    return bool(written == rnd.checks["bare_same_bodies"] == rnd.size)


def bare_by_smtp(rnd: Round, relay: SmtpRelay, keys: Keys, base_url: str, processes: int) -> bool:
    """The bare loop by SMTP to a fresh relay, over the worker hosts' connections in all;
    the relay must get every shopper once."""
    relay.stop()
    fresh = SmtpRelay()
    try:
        with bare_cpu(rnd):
            rnd.bare_s = asyncio.run(
                bare_smtp_loop(keys, base_url, fresh, processes * SMTP_CONNECTIONS)
            )
        messages, distinct = fresh.delivered()
    finally:
        fresh.stop()
    rnd.checks["bare_messages"] = messages
    return messages == distinct == rnd.size


# ---------------------------------------------------------------- report


def mb(values: list[float]) -> str:
    return "+".join(f"{v:.0f}" for v in values)


def round_table(rounds: list[Round]) -> list[str]:
    lines = [
        "| N | round | seed s | POST ms | wave start s | wave written s | first msg s "
        "| last msg s | msgs/s | all recorded s "
        "| worker RSS idle MB | worker RSS peak MB | worker CPU s | API CPU s | PG CPU s "
        "| host busy | other CPU s | waited for quiet s "
        "| bare loop s | bare CPU s | bare PG CPU s | fan-out / bare | msgs per host "
        "| worker CPU per host s | sink CPU s | checks |",
        "|" + "---:|" * 25 + "---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.size} | {r.index} | {r.seed_s:.1f} | {r.post_ms:.0f} "
            f"| {r.planned_first_s:.2f} | {r.planned_last_s:.2f} | {r.first_s:.2f} "
            f"| {r.last_s:.2f} | {r.rate:.0f} | {r.recorded_s:.2f} | {mb(r.rss_idle_mb)} "
            f"| {mb(r.rss_peak_mb)} | {r.worker_cpu_s:.1f} | {r.api_cpu_s:.2f} "
            f"| {r.pg_cpu_s:.1f} | {100 * r.host_busy:.0f}% | {r.other_cpu_s:.1f} "
            f"| {r.quiet_wait_s:.0f} "
            f"| {r.bare_s:.2f} | {r.bare_cpu_s:.1f} | {r.bare_pg_cpu_s:.1f} | {r.ratio:.2f} "
            f"| {'+'.join(str(n) for n in r.host_msgs)} "
            f"| {'+'.join(f'{c:.1f}' for c in r.host_cpu_s)} | {r.sink_cpu_s:.1f} "
            f"| {'ok' if r.checks['ok'] else 'FAILED'} |"
        )
    return lines


def medians(rounds: list[Round]) -> dict[int, dict[str, float]]:
    result: dict[int, dict[str, float]] = {}
    for size in sorted({r.size for r in rounds}):
        rs = [r for r in rounds if r.size == size]

        def med(get: Any, rs: list[Round] = rs) -> float:
            return float(statistics.median(get(r) for r in rs))

        result[size] = {
            "planned_first_s": med(lambda r: r.planned_first_s),
            "planned_last_s": med(lambda r: r.planned_last_s),
            "first_s": med(lambda r: r.first_s),
            "last_s": med(lambda r: r.last_s),
            "rate": med(lambda r: r.rate),
            "recorded_s": med(lambda r: r.recorded_s),
            "rss_max": med(lambda r: r.rss_max),
            "rss_sum": med(lambda r: r.rss_sum),
            "cpu_ms_per_msg": med(lambda r: 1000 * r.worker_cpu_s / r.size),
            "pg_ms_per_msg": med(lambda r: 1000 * r.pg_cpu_s / r.size),
            "bare_s": med(lambda r: r.bare_s),
            "wave_cpu_ms_per_msg": med(lambda r: 1000 * r.cpu_s / r.size),
            "bare_cpu_ms_per_msg": med(lambda r: 1000 * r.bare_total_cpu_s / r.size),
            "cpu_ratio": med(lambda r: r.cpu_s / r.bare_total_cpu_s),
            "bare_rate": med(lambda r: r.size / r.bare_s),
            "ratio": med(lambda r: r.ratio),
            "smallest_share": med(lambda r: r.smallest_share),
        }
    return result


def median_table(meds: dict[int, dict[str, float]]) -> list[str]:
    lines = [
        "| N | wave start s | wave written s | first msg s | last msg s | msgs/s "
        "| all recorded s | peak RSS / process MB "
        "| peak RSS, all workers MB | worker CPU ms/msg | PG CPU ms/msg | bare loop s "
        "| bare msgs/s | CPU ms/msg, wave (workers + API + PG) | CPU ms/msg, bare (its own + PG) "
        "| CPU, wave / bare | fan-out / bare | least busy host's share of an even split |",
        "|" + "---:|" * 18,
    ]
    for size, m in meds.items():
        lines.append(
            f"| {size} | {m['planned_first_s']:.2f} | {m['planned_last_s']:.2f} "
            f"| **{m['first_s']:.2f}** | **{m['last_s']:.2f}** | **{m['rate']:.0f}** "
            f"| {m['recorded_s']:.2f} | **{m['rss_max']:.0f}** | {m['rss_sum']:.0f} "
            f"| {m['cpu_ms_per_msg']:.2f} | {m['pg_ms_per_msg']:.2f} | {m['bare_s']:.2f} "
            f"| {m['bare_rate']:.0f} | {m['wave_cpu_ms_per_msg']:.2f} "
            f"| {m['bare_cpu_ms_per_msg']:.2f} | {m['cpu_ratio']:.2f} "
            f"| **{m['ratio']:.2f}** | {m['smallest_share']:.2f} |"
        )
    return lines


def word(ok: bool) -> str:
    return "met" if ok else "NOT met"


def smtp_verdicts(meds: dict[int, dict[str, float]]) -> list[str]:
    if SMTP_TARGET_N not in meds:
        rate = meds[max(meds)]["rate"]
        return [
            f"- {SMTP_TARGET_N} through the SMTP sender in <= {SMTP_TARGET_S:.0f} s: not run; "
            f"at the {rate:.0f} msgs/s measured at {max(meds)} it would take "
            f"~{SMTP_TARGET_N / rate:.0f} s"
        ]
    last = meds[SMTP_TARGET_N]["last_s"]
    return [
        f"- {SMTP_TARGET_N} through the SMTP sender to a local relay in <= "
        f"{SMTP_TARGET_S:.0f} s: {last:.0f} s → **{word(last <= SMTP_TARGET_S)}**"
    ]


def verdicts(meds: dict[int, dict[str, float]], hosts: int, sink: str) -> list[str]:
    sizes = sorted(meds)
    firsts = ", ".join(f"{meds[s]['first_s']:.2f} s at {s}" for s in sizes)
    lines = [
        f"- first message < {FIRST_TARGET_S:.0f} s after the 202 (median, every size): "
        f"{firsts} → **{word(all(meds[s]['first_s'] < FIRST_TARGET_S for s in sizes))}**"
    ]
    if sink == "smtp":
        lines += smtp_verdicts(meds)
    elif LAST_TARGET_N in meds:
        last = meds[LAST_TARGET_N]["last_s"]
        lines.append(
            f"- {LAST_TARGET_N} messages in <= {LAST_TARGET_S:.0f} s from one worker "
            f"host: {last:.1f} s → **{word(last <= LAST_TARGET_S)}**"
            if hosts == 1
            else f"- {LAST_TARGET_N} messages from {hosts} worker hosts: {last:.1f} s (the "
            f"{LAST_TARGET_S:.0f} s target is for one host)"
        )
    else:
        lines.append(f"- {LAST_TARGET_N} in <= {LAST_TARGET_S:.0f} s: not measured this run")
    small, large = meds[sizes[0]]["rss_max"], meds[sizes[-1]]["rss_max"]
    flat = large <= RSS_FLAT * small
    below = all(meds[s]["rss_max"] < RSS_TARGET_MB for s in sizes)
    lines.append(
        f"- worker RSS flat from {sizes[0]} to {sizes[-1]} (peak per process {small:.0f} → "
        f"{large:.0f} MB, flat = at most {RSS_FLAT:.1f}x) and < {RSS_TARGET_MB:.0f} MB: "
        f"flat **{word(flat)}**, < {RSS_TARGET_MB:.0f} MB **{word(below)}** (all worker "
        f"processes together: {meds[sizes[-1]]['rss_sum']:.0f} MB at {sizes[-1]})"
    )  # fmt: skip
    if 1_000_000 not in meds and sink == "outbox":
        rate = meds[sizes[-1]]["rate"]
        lines.append(
            f"- N=1000000 not run: at the {rate:.0f} msgs/s measured at {sizes[-1]} one round "
            f"would take ~{1_000_000 / rate / 60:.0f} min of fan-out (plus seeding and the "
            "bare loop)"
        )
    return lines


def _hosts(n: int) -> str:
    return "ONE worker host" if n == 1 else f"{n} worker hosts (separate process trees), each"


SMTP_SECTION = (
    "email shoppers, sent by the SMTP sender ({connections} pooled connections per worker "
    "process opened by aiosmtplib, MAIL, RCPT and DATA pipelined, no STARTTLS on loopback) "
    "to bench/smtp_sink.py, a process of its "
    "own answering every command at once (PIPELINING offered); the times are the relay's "
    '(first / N-th message\'s body complete), its CPU is the "sink CPU" column and is '
    "not in the worker's. Bare loop: after the services stop, this script reads the same "
    "notifications, decrypts and renders them as below, writes the MIME with "
    "backinstock.senders.mime and sends them with aiosmtplib's sendmail over as many "
    "connections as the worker host had, to a fresh relay, which must get every shopper "
    "once (the bodies are not compared: their Date headers differ)"
)


def section(
    args: argparse.Namespace, pg: dict[str, str], lines: list[str], source: tuple[str, str]
) -> str:
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    waves = Settings.from_env().waves
    variant = f", --poll-ms {args.idle_poll_ms}" if args.idle_poll_ms else ""
    variant += ", email through the SMTP sender to a local relay" if args.sink == "smtp" else ""
    poll = ", ".join(sorted(POLL_SEEN)) or "?"
    return "\n".join([
        f"## {now:%Y-%m-%d} — restock fan-out (PostgreSQL + Redis{variant}"
        + (f", {args.hosts} worker hosts" if args.hosts > 1 else "")
        + (", the first writing waves alone)" if args.writer_host else ")"), "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/fanout.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; source: {source[0]}"
        + ("" if source[0] == source[1] else f" (at the end: {source[1]})"),
        f"- machine: nproc={os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}, "
        f"fsync={pg['fsync']}, shared_buffers={pg['shared_buffers']}); Redis broker on "
        f"{REDIS_URL} (flushed per round); all on this host",
        f"- services: `backinstock serve` (1 uvicorn process) and {_hosts(args.hosts)} "
        f"`backinstock worker --processes {args.processes} --threads {args.threads}`"
        + (f" --poll-ms {args.idle_poll_ms}" if args.idle_poll_ms else "")
        + " (dramatiq's idle Redis poll: every 0.5-1x worker_timeout; `backinstock worker` "
        f"sets it from --poll-ms, default 100 ms; seen in the worker processes' environment: "
        f"dramatiq_worker_timeout={poll}); defaults "
        f"otherwise (db_pool_size=10, sweep every {waves.sweep_interval_seconds:g} s, "
        f"stale_after {waves.stale_after_seconds:g} s, batch_multiplier "
        f"{waves.batch_multiplier:g}), BACKINSTOCK_LOG_LEVEL=WARNING, "
        "BACKINSTOCK_QUIET_HOURS='' (off), "
        + (SMTP_SECTION.format(connections=SMTP_CONNECTIONS) if args.sink == "smtp"
           else "dev outbox sender (no provider configured)"),
        "- per round: fresh database, migrate, key (inventory+admin), N waiting "
        + ("email" if args.sink == "smtp" else "SMS") + " shoppers "
        "on one SKU seeded by COPY (sealed contact + sealed name, blind index, strictly "
        "increasing created_at, then VACUUM ANALYZE), services started, one "
        "`POST /v1/restocks` with available=N (first_wave = N)",
        "- times are from the 202 to: the first / last notification row's created_at "
        "(\"wave start\" / \"wave written\": the wave's first and last chunk), the first / "
        "N-th dev_outbox row's created_at (first / last msg), and the last notification's "
        "sent_at (\"all recorded\"); msgs/s = N / last msg s",
        "- with `--sink smtp` the first / last msg are the relay's (see above), not dev_outbox "
        "rows" if args.sink == "smtp" else "- all messages go to the dev outbox",
        "- worker RSS: VmRSS before the POST and VmHWM at the end of each dramatiq worker "
        "process (children of the worker hosts' pids), in MB; worker/API CPU = user+system "
        "seconds, 202 → last message; PG CPU = all postgres processes (with the backends "
        "that exited), same span; host busy = all cores, same span; other CPU = host "
        "busy - (worker + API + PG + this script): other jobs share this host. Before "
        "each POST the script waits (up to 180 s) for the host to be under 30% busy over "
        "2 s; other CPU also leaves out the SMTP relay's",
        f"- bare loop: after the services stop, this script reads the same notifications "
        f"(200 per query, joined to subscription and product), decrypts contact and name, "
        f"renders with backinstock.dispatch.render, seals the recipient and inserts the "
        f"dev_outbox rows with asyncpg executemany per {BARE_BATCH}; single process, no "
        "broker, no claims, no status writes. Its bodies are compared with the worker's "
        "(must be identical)" + (" — with `--sink smtp`, the SMTP bare loop described "
                                 "above instead" if args.sink == "smtp" else ""),
        "- CPU, wave / bare: what the wave cost the host (workers + API + PG, 202 → last "
        "message) against what the bare loop cost it (this script's CPU + PG's, while it "
        "runs); the sink's CPU is in neither. On a host of C cores the wave cannot finish "
        "in under its CPU / C seconds, so fan-out / bare <= 1.5 needs CPU, wave / bare "
        "<= 1.5 x C / u, u being the cores the bare loop keeps busy (its CPU / its seconds)",
        "", "Per round:", "", *lines, "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--hosts", type=int, default=1, help="worker hosts (process trees)")
    parser.add_argument(
        "--writer-host",
        action="store_true",
        help="the first host takes the waves queue alone (`--queue waves`), the others "
        "the dispatch queue: the wave writer gets an event loop no sender shares",
    )
    parser.add_argument(
        "--idle-poll-ms",
        type=int,
        help="passed as `backinstock worker --poll-ms`: an idle consumer polls Redis every "
        "0.5-1x this (default: the CLI's own, 100 ms)",
    )
    parser.add_argument(
        "--sink",
        choices=("outbox", "smtp"),
        default="outbox",
        help="where messages go: the dev outbox (SMS shoppers, no provider configured) or "
        "a local SMTP relay through the SMTP sender (email shoppers)",
    )
    parser.add_argument("--timeout", type=float, help="seconds per fan-out (default: 120 + N/250)")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    if args.writer_host and args.hosts < 2:
        parser.error("--writer-host needs --hosts 2 or more")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    OUT.mkdir(exist_ok=True)
    pg: dict[str, str] = {}
    rounds: list[Round] = []
    source_before = source_state()
    for size in sizes:
        for i in range(1, args.rounds + 1):
            rnd = Round(size, i)
            one_round(rnd, args, pg)
            rounds.append(rnd)
            print(
                f"N={size} round {i}: first {rnd.first_s:.2f} s, last {rnd.last_s:.2f} s "
                f"({rnd.rate:.0f} msg/s), wave written {rnd.planned_last_s:.2f} s, PG CPU "
                f"{rnd.pg_cpu_s:.1f} s, RSS peak "
                f"{mb(rnd.rss_peak_mb)} MB, worker CPU {rnd.worker_cpu_s:.1f} s, host busy "
                f"{100 * rnd.host_busy:.0f}% (others {rnd.other_cpu_s:.1f} s CPU); "
                f"bare {rnd.bare_s:.2f} s "
                f"(x{rnd.ratio:.2f}); checks {rnd.checks}",
                flush=True,
            )
    meds = medians(rounds)
    lines = [*round_table(rounds), "", "Medians:", "", *median_table(meds), "",
             "Targets:", "", *verdicts(meds, args.hosts, args.sink)]  # fmt: skip
    print("\n" + "\n".join(lines))
    if not all(r.checks["ok"] for r in rounds):
        print("\nCORRECTNESS CHECK FAILED", file=sys.stderr)
    if args.write:
        write_results(section(args, pg, lines, (source_before, source_state())))
        print(f"written to {RESULTS}")
    if not all(r.checks["ok"] for r in rounds):
        sys.exit(1)


if __name__ == "__main__":
    main()
