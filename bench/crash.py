"""Crash benchmark: restock waves through the real provider clients into the local fakes,
with the worker killed (SIGKILL), stopped (SIGTERM) and the broker flushed mid-wave, and
what recording every provider call as it starts and ends costs in throughput.

PostgreSQL + Redis (production mode): per run, `backinstock serve` (the API) and ONE
`backinstock worker --processes 1 --threads 4`, both subprocesses of this script; the fake
provider (tests/fakes: FakeTwilio, FakeSMTP, FakeWeChat) runs in this process, and the
faults and counts come from tests/crashkit.py, as in the suite's crash tests. Per channel:

1. throughput: a wave uninterrupted with the current code and with the batch-at-the-end
   design (commit BASELINE, checked out in a temporary git worktree and run with
   PYTHONPATH pointing into it), alternately, --rounds times each; once with fakes that
   answer at once (accept delay 0: the worst case for the recording's cost;
   --throughput-shoppers) and once with a provider latency (--latency,
   --latency-shoppers); msgs/s = shoppers / (the restock's 202 → the last message the
   fake accepted);
2. faulted: --shoppers shoppers, 3 kill -9 and 1 SIGTERM at seeded random points and one
   broker flush; shoppers told, lost, duplicated, in-doubt resolutions, wall time;
3. the issue's "done when" scenario: --scenario-shoppers shoppers, two kill -9 and one
   broker flush (the suite's test_two_kills_and_a_broker_flush_lose_nobody).

The defaults (throughput on 5,000 and 1,000 shoppers) take about 20 minutes on a 2-core
host; the throughput on the faulted wave's own 20,000 shoppers, as recorded, about 35:

    flock /tmp/backinstock-bench.lock .venv/bin/python bench/crash.py --write
    flock /tmp/backinstock-bench.lock .venv/bin/python bench/crash.py \
        --throughput-shoppers 20000 --latency-shoppers 2000 --write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import redis
from benchlib import (
    PG,
    RESULTS,
    ROOT,
    cpu_seconds,
    fresh_database,
    set_summary_rows,
    source_state,
    write_results,
)
from sqlalchemy import func, insert, select, text

sys.path.insert(0, str(ROOT))  # the fakes and the crash harness live with the tests

from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import new_key_spec
from backinstock.db import transaction
from backinstock.dispatch.models import Notification
from backinstock.identity import NormalizedContact
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from tests.crashkit import (
    FAST,
    WORKER_ARGS,
    Fault,
    Provider,
    Tally,
    random_faults,
    run_wave,
    start_provider,
)
from tests.restocks.helpers import post_level
from tests.restocks.seed import contact_for
from tests.server import BackinstockProcess, ServerProcess

BASELINE = "dfad2e7"  # "batch at the end": claim 200, send them all, then record
OUT = ROOT / "bench" / "out" / "crash"  # service logs (git-ignored)
DB = "backinstock_bench_crash"  # prefix of every database this script makes
REDIS_URL = "redis://127.0.0.1:6379/12"  # the broker; flushed before every run
SMTP_CONNECTIONS = 4  # the product's default, and the batch-at-the-end code's fixed pool
RATIO_TARGET = 0.9
# The current code told to record as the old design did: every message of a claim marked
# in flight by the first start's commit, every result by the claim's last commit. It
# measures the cost of recording each call alone, on otherwise identical code (the commit
# above also lacks later changes that cost CPU per message whatever the recording, such as
# the email header checks).
RECORDED_AT_THE_END = {
    "BACKINSTOCK_START_LOOKAHEAD": "200",
    "BACKINSTOCK_RECORD_RESULTS": "100000",
    "BACKINSTOCK_RECORD_AFTER_SECONDS": "3600",
}
FAULTED_KINDS = ["kill", "kill", "kill", "term", "flush"]
SCENARIO_KINDS = ["kill", "flush", "kill"]  # as the suite's test, in that order
SEED_CHUNK = 2000
SETTINGS: list[str] = []  # --database-setting


@dataclass(frozen=True)
class Design:
    name: str
    env: dict[str, str]  # added to the services' environment
    journaled: bool  # the schema has the in_doubt column (migration 0007)


@dataclass
class Run:
    kind: str  # "throughput", "faulted" or "scenario"
    channel: Channel
    design: str
    latency: float
    round: int
    faults: list[Fault]
    tally: Tally
    statuses: dict[str, int] = field(default_factory=dict)
    visible_duplicates: int | None = None  # email: copies with a Message-ID of their own
    worker_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    host_busy: float = 0.0
    commits: int = 0  # transactions committed in the run's database
    flush_failures: int = 0  # "journal_flush_failed" in the worker's log (a deadlock, ...)
    problems: list[str] = field(default_factory=list)

    @property
    def shoppers(self) -> int:
        return self.tally.shoppers

    @property
    def rate(self) -> float:
        return self.tally.wave_per_second

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------- environment


def configure_environment() -> None:
    """This process and every service share one set of keys (it seals the seeded contacts,
    the worker opens them); nothing from the caller's BACKINSTOCK_* settings leaks in."""
    for name in [n for n in os.environ if n.startswith("BACKINSTOCK_")]:
        del os.environ[name]
    os.environ.pop("PYTHONPATH", None)
    os.environ.update(
        BACKINSTOCK_REDIS_URL=REDIS_URL,
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_ALLOWED_LINK_HOSTS="shop.example",
        BACKINSTOCK_LOG_LEVEL="WARNING",
        BACKINSTOCK_QUIET_HOURS="",  # off: the bench must not depend on the time of day
    )


def database_url(name: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def use_database(name: str) -> None:
    os.environ["BACKINSTOCK_DATABASE_URL"] = database_url(name)


def cli(design: Design, *argv: str) -> str:
    """`python -m backinstock ...` with the design's code on the current database."""
    done = subprocess.run(
        [sys.executable, "-m", "backinstock", *argv],
        env={**os.environ, **design.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"backinstock {' '.join(argv)} ({design.name}) failed:\n{done.stderr[-3000:]}")
    return done.stdout


def admin_sql(*statements: str, dbname: str = "postgres") -> None:
    conn = psycopg2.connect(dbname=dbname, **PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def clone(template: str, name: str) -> None:
    admin_sql(
        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        f"CREATE DATABASE {name} TEMPLATE {template}",
    )


def drop_databases() -> None:
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{DB}\\_%",))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


def flush_broker() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


@contextlib.contextmanager
def baseline_checkout(commit: str) -> Iterator[Path]:
    """The batch-at-the-end code in a temporary worktree (removed at the end)."""
    parent = Path(tempfile.mkdtemp(prefix="backinstock-batch-at-the-end-"))
    path = parent / "checkout"
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(path), commit], check=True,
                   capture_output=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], capture_output=True)
        subprocess.run([*git, "worktree", "prune"], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def check_import(design: Design, where: Path) -> str:
    """Where `import backinstock` resolves with the design's environment (must be ``where``)."""
    done = subprocess.run(
        [sys.executable, "-c", "import backinstock; print(backinstock.__file__)"],
        env={**os.environ, **design.env}, cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = done.stdout.strip()
    if not Path(found).resolve().is_relative_to(where.resolve()):
        sys.exit(f"{design.name}: backinstock resolves to {found}, not under {where}")
    return found


# ---------------------------------------------------------------- seeding


async def seed(runtime: Runtime, n: int, channel: Channel) -> None:
    """N waiting shoppers built by the service's own row builder (as
    tests/restocks/seed.py::seed_waiting), inserted in chunks: its INSERT with the queue
    position in RETURNING costs a scan of the queue per row, minutes at 20,000."""
    table = Subscription.metadata.tables[Subscription.__tablename__]
    # The baseline's schema is older: leave out the columns its migrations never made
    # (the current design's later migrations add them, nullable).
    async with runtime.sessions() as session:
        present = set(
            (
                await session.execute(
                    text("SELECT column_name FROM information_schema.columns "
                         "WHERE table_name = 'subscriptions'")
                )
            ).scalars()
        )  # fmt: skip
    for start in range(0, n, SEED_CHUNK):
        rows = []
        for i in range(start, min(n, start + SEED_CHUNK)):
            contact = NormalizedContact(channel, contact_for(channel, i))
            payload = SubscriptionCreate(sku="SKU-1", channel=channel, contact=contact.value)
            index = runtime.keys.blind_index.digest(contact.index_form)
            params = _NewSubscription.build(runtime.keys, payload, contact, index).params
            row = params | {"status": "waiting", "notification_count": 0,
                            "updated_at": params["created_at"]}  # fmt: skip
            rows.append({name: value for name, value in row.items() if name in present})
        async with transaction(runtime.sessions) as session:
            await session.execute(insert(table), rows)
    async with runtime.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(table))
    assert count == n, f"seeded {count} of {n}"


@dataclass(frozen=True)
class Template:
    databases: dict[str, str]  # design name -> template database
    key: str  # an inventory API key, in every one of them


async def make_templates(channel: Channel, n: int, designs: list[Design]) -> Template:
    """The baseline's schema migrated by its own code, seeded and keyed once; the current
    design's template is a copy migrated on by the current code (the same shoppers)."""
    baseline, others = designs[-1], designs[:-1]
    base = f"{DB}_tpl_{channel.value}_{n}_{baseline.name.replace('-', '_')}"
    fresh_database(base)
    use_database(base)
    cli(baseline, "migrate")
    out = cli(baseline, "keys", "create", "--name", "bench", "--scope", "inventory")
    key = out.strip().splitlines()[-1]
    runtime = Runtime.create(Settings.from_env())
    try:
        await seed(runtime, n, channel)
    finally:
        await runtime.close()
    admin_sql("VACUUM ANALYZE subscriptions", dbname=base)
    databases = {baseline.name: base}
    for design in others:
        name = f"{DB}_tpl_{channel.value}_{n}_{design.name.replace('-', '_')}"
        clone(base, name)
        use_database(name)
        cli(design, "migrate")
        databases[design.name] = name
    return Template(databases, key)


# ---------------------------------------------------------------- measuring


def host_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children")
                     .read_text().split()]  # fmt: skip
    return found


class CpuSampler:
    """CPU seconds, from the restock on, of the worker's processes (every process this
    script started but the API: the worker, its Dramatiq processes, its restarts) and of
    the PostgreSQL backends connected to the run's database (other jobs' queries are not
    counted), sampled every 0.2 s: a process that exits (a killed worker) keeps its last
    sample."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.api_pid = 0
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._host0 = host_ticks()
        self._result: tuple[float, float, float] | None = None

    def start(self, api_pid: int) -> None:
        self.api_pid = api_pid
        self._conn = psycopg2.connect(dbname="postgres", **PG)
        self._conn.autocommit = True
        self._host0 = host_ticks()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, float, float]:
        """(worker CPU s, PostgreSQL CPU s, share of the host's cores busy)."""
        if self._result is not None:
            return self._result
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        host1 = host_ticks()
        if self._conn is not None:
            self._conn.close()
        spent = {"worker": 0.0, "pg": 0.0}
        for key, last in self._last.items():
            spent[key[0]] += last - self._first.get(key, 0.0)
        busy = (host1[0] - self._host0[0]) / max(host1[1] - self._host0[1], 1)
        self._result = (spent["worker"], spent["pg"], busy)
        return self._result

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        skip = {os.getpid(), *descendants(self.api_pid)}  # this script, the API
        pids = [("worker", p) for p in descendants(os.getpid()) if p not in skip]
        with contextlib.suppress(psycopg2.Error), self._conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,))
            pids += [("pg", int(pid)) for (pid,) in cur.fetchall()]
        for key in pids:
            try:
                spent = cpu_seconds(key[1])
            except (OSError, IndexError):
                continue
            if first:
                self._first[key] = spent
            self._last[key] = spent


async def one_run(
    kind: str,
    channel: Channel,
    design: Design,
    template: Template,
    shoppers: int,
    latency: float,
    faults: list[Fault],
    rnd: int,
) -> Run:
    name = f"{DB}_run"
    clone(template.databases[design.name], name)
    for setting in SETTINGS:  # --database-setting: a diagnosis, e.g. synchronous_commit=off
        key, _, value = setting.partition("=")
        admin_sql(f"ALTER DATABASE {name} SET {key} = '{value}'")
    use_database(name)
    flush_broker()
    logs = OUT / f"{kind}-{channel.value}-{design.name}-{latency:g}-{rnd}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    provider = start_provider(
        channel, rate=0, accept_delay=latency, smtp_connections=SMTP_CONNECTIONS
    )
    api = ServerProcess({**FAST, **design.env}, logs / "api.log")
    runtime: Runtime | None = None
    sampler = CpuSampler(name)
    api_up = asyncio.ensure_future(asyncio.to_thread(api.start))  # while the worker starts
    try:
        runtime = Runtime.create(Settings.from_env())

        async def restock(_: BackinstockProcess) -> None:
            await api_up
            assert api._proc is not None
            sampler.start(api._proc.pid)
            async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
                response = await post_level(http, template.key, shoppers)
            assert response.status_code == 202, response.text
            assert response.json()["first_wave"] == shoppers, response.text

        tally = await run_wave(
            runtime, provider, shoppers, faults, restock, logs,
            within=120 + shoppers / 20, worker_env=design.env, worker_args=WORKER_ARGS,
            ready_first=True, journaled=design.journaled,
        )  # fmt: skip
        run = Run(kind, channel, design.name, latency, rnd, faults, tally)
        run.worker_cpu_s, run.pg_cpu_s, run.host_busy = sampler.stop()
        run.statuses = await statuses(runtime)
        if channel is Channel.EMAIL:
            run.visible_duplicates = visible_duplicates(provider)
        run.problems = problems(run, provider)
        log = (logs / "worker.log").read_text(errors="replace")
        run.flush_failures = log.count("journal_flush_failed")
        run.commits = commits(name)
        return run
    finally:
        sampler.stop()
        with contextlib.suppress(Exception):
            await api_up  # started (or failed to) before it is stopped
        api.stop()
        provider.stop()
        if runtime is not None:
            await runtime.close()


def commits(dbname: str) -> int:
    """Transactions committed in the run's database so far (all of them are the run's: it
    was made for it). The worker has exited, so its backends have reported theirs."""
    conn = psycopg2.connect(dbname="postgres", **PG)
    with conn.cursor() as cur:
        time.sleep(0.5)  # a backend reports its counters as it exits
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,))
        found = int(cur.fetchone()[0])
    conn.close()
    return found


async def statuses(runtime: Runtime) -> dict[str, int]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(Notification.status, func.count()).group_by(Notification.status)
        )
        return {str(status): int(count) for status, count in rows}


def visible_duplicates(provider: Provider) -> int:
    """Copies a mail store shows twice: per recipient, Message-IDs beyond the first."""
    ids: dict[str, set[str]] = {}
    for recipient, message_id in zip(provider.recipients(), provider.message_ids(), strict=True):
        ids.setdefault(recipient, set()).add(message_id)
    return sum(len(found) - 1 for found in ids.values())


def problems(run: Run, provider: Provider) -> list[str]:
    """What must hold: everyone told; SMS never twice (reconciled with Twilio's list);
    email never twice as the recipient sees it (same Message-ID); WeChat twice only for a
    message in flight at a kill and resent; nothing left open, in doubt or claimed."""
    t, found = run.tally, []
    if t.lost:
        found.append(f"{t.lost} shoppers lost")
    if run.statuses != {"sent": t.shoppers}:
        found.append(f"statuses {run.statuses}")
    if run.kind == "throughput" and t.duplicates:
        found.append(f"{t.duplicates} duplicates without a fault")
    if run.kind == "throughput" and t.in_doubt.total():
        # Nothing was killed: a claim lapsed under a live worker.
        found.append(f"in doubt without a fault: {dict(t.in_doubt)}")
    if run.channel is Channel.SMS and t.duplicates:
        found.append(f"{t.duplicates} SMS duplicates")
    if run.channel is Channel.EMAIL and (run.visible_duplicates or not t.same_message_id):
        found.append(f"{run.visible_duplicates} email duplicates with their own Message-ID")
    if run.channel is Channel.WECHAT and t.duplicates > t.in_doubt["resent"]:
        found.append(f"{t.duplicates} WeChat duplicates, {t.in_doubt['resent']} resent")
    if t.in_doubt["unresolved"] or t.in_doubt["dropped"]:
        found.append(f"in doubt left {dict(t.in_doubt)}")
    if any(t.open_after_term):
        found.append(f"claimed rows left by SIGTERM: {t.open_after_term}")
    return found


def faults_for(kinds: list[str], seed: int, shoppers: int, shuffle: bool) -> list[Fault]:
    kinds = list(kinds)
    if shuffle:
        random.Random(seed).shuffle(kinds)
    return random_faults(seed=seed, shoppers=shoppers, kinds=kinds)


def say(run: Run) -> None:
    """One line per run, on stdout and in bench/out/crash/runs.log."""
    t = run.tally
    doubt = ", ".join(f"{k} {v}" for k, v in sorted(t.in_doubt.items())) or "none"
    line = (
        f"{datetime.now(UTC):%H:%M:%S} {run.kind:<10} {run.channel.value:<6} "
        f"{run.design:<17} latency {run.latency:g} s "
        f"round {run.round}: {t.shoppers} shoppers, 202 → last accepted {t.wave_seconds:.2f} s "
        f"({run.rate:.0f} msgs/s), told {t.told}, lost {t.lost}, duplicates {t.duplicates}"
        + (f" (visible {run.visible_duplicates})" if run.visible_duplicates is not None else "")
        + f", in doubt: {doubt}; worker CPU {run.worker_cpu_s:.1f} s, PG CPU "
        f"{run.pg_cpu_s:.1f} s, host busy {100 * run.host_busy:.0f}%"
        + f", DB commits {run.commits}, journal flushes failed {run.flush_failures}"
        + ("" if run.ok else f"; PROBLEMS: {run.problems}")
    )
    print(line, flush=True)
    with (OUT / "runs.log").open("a") as log:
        log.write(line + "\n")


# ---------------------------------------------------------------- report


def fmt_faults(faults: list[Fault]) -> str:
    names = {"kill": "kill -9", "term": "SIGTERM", "flush": "flush"}
    return ", ".join(f"{names[f.kind]} @{f.after}" for f in faults)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def throughput_rows(
    runs: list[Run], designs: list[Design]
) -> tuple[list[str], list[dict[str, Any]]]:
    rounds = max((r.round for r in runs), default=0)
    lines = [
        "| channel | provider latency | design | shoppers | "
        + " | ".join(f"round {i} msgs/s" for i in range(1, rounds + 1))
        + " | **median msgs/s** | median s (202 → last) | worker CPU ms/msg | PG CPU ms/msg "
        "| DB commits / msg | host busy | **current / this design** |",
        "|---|---:|---|---:|" + "---:|" * rounds + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    order = [c.value for c in Channel]
    keys = sorted(
        {(r.latency, r.channel.value) for r in runs}, key=lambda k: (k[0], order.index(k[1]))
    )
    for latency, channel in keys:
        medians: dict[str, float] = {}
        for design in designs:
            mine = [r for r in runs if (r.latency, r.channel.value, r.design) ==
                    (latency, channel, design.name)]  # fmt: skip
            if not mine:
                continue
            mine.sort(key=lambda r: r.round)
            medians[design.name] = median([r.rate for r in mine])
            per_msg = [1000 * r.worker_cpu_s / r.shoppers for r in mine]
            pg_msg = [1000 * r.pg_cpu_s / r.shoppers for r in mine]
            ratio = ""
            if design is not designs[0] and designs[0].name in medians:
                value = medians[designs[0].name] / medians[design.name]
                met = value >= RATIO_TARGET
                ratio = f"**{value:.2f}x** ({'met' if met else 'NOT met'})"
                ratios.append({"latency": latency, "channel": channel, "ratio": value,
                               "current": medians[designs[0].name],
                               "baseline": medians[design.name], "design": design.name,
                               "shoppers": mine[0].shoppers})  # fmt: skip
            check = "" if all(r.ok for r in mine) else " (CHECK FAILED)"
            lines.append(
                f"| {channel} | {latency:g} s | {design.name}{check} | {mine[0].shoppers} | "
                + " | ".join(f"{r.rate:.0f}" for r in mine)
                + f" | **{medians[design.name]:.0f}** "
                f"| {median([r.tally.wave_seconds for r in mine]):.2f} "
                f"| {median(per_msg):.3f} | {median(pg_msg):.3f} "
                f"| {median([r.commits / r.shoppers for r in mine]):.3f} "
                f"| {100 * median([r.host_busy for r in mine]):.0f}% | {ratio} |"
            )
    return lines, ratios


def faulted_rows(runs: list[Run], ratios: list[dict[str, Any]]) -> list[str]:
    reference = {(i["channel"], i["latency"]): i for i in ratios}
    lines = [
        "| scenario | channel | shoppers | faults (at messages accepted) | told | lost "
        "| duplicates | in doubt: found / callback / resent / dropped / unresolved "
        "| claimed rows left by SIGTERM | SIGTERM exit s | 202 → last s | msgs/s "
        "| vs uninterrupted | checks |",
        "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        t = r.tally
        dup = str(t.duplicates)
        if r.visible_duplicates is not None:
            dup += f" ({r.visible_duplicates} visible: same Message-ID)"
        doubt = " / ".join(str(t.in_doubt[k]) for k in
                           ("found", "callback", "resent", "dropped", "unresolved"))  # fmt: skip
        ref = reference.get((r.channel.value, r.latency))
        versus = ""
        if ref:
            versus = f"{r.rate / ref['current']:.2f}x"
            if ref["shoppers"] != r.shoppers:
                versus += f" (of {ref['shoppers']} uninterrupted)"
        lines.append(
            f"| {r.kind} | {r.channel.value} | {t.shoppers} | {fmt_faults(r.faults)} "
            f"| {t.told} | {t.lost} | {dup} | {doubt} "
            f"| {', '.join(map(str, t.open_after_term)) or '-'} "
            f"| {', '.join(f'{s:.1f}' for s in t.term_seconds) or '-'} "
            f"| {t.wave_seconds:.2f} | {r.rate:.0f} | {versus} "
            f"| {'ok' if r.ok else 'FAILED: ' + '; '.join(r.problems)} |"
        )
    return lines


def verdicts(faulted: list[Run], scenario: list[Run], ratios: list[dict[str, Any]]) -> list[str]:
    def word(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    for label, runs in (("faulted wave", faulted), ("done-when scenario", scenario)):
        for r in runs:
            t = r.tally
            extra = ""
            if r.channel is Channel.SMS:
                extra = f", {t.duplicates} duplicates"
            elif r.channel is Channel.EMAIL:
                extra = f", {r.visible_duplicates} duplicates visible to the recipient"
            else:
                extra = f", {t.duplicates} duplicates ({t.in_doubt['resent']} resent in doubt)"
            lines.append(
                f"- {label}, {r.channel.value}: {t.told} of {t.shoppers} told, {t.lost} lost"
                f"{extra} → **{word(r.ok)}**"
            )
    for item in ratios:
        lines.append(
            f"- throughput, {item['channel']}, provider latency {item['latency']:g} s, "
            f"vs {item['design']}: {item['current']:.0f} / {item['baseline']:.0f} msgs/s = "
            f"**{item['ratio']:.2f}x** (target >= {RATIO_TARGET}x) → "
            f"**{word(item['ratio'] >= RATIO_TARGET)}**"
        )
    return lines


def problem_lines(runs: list[Run]) -> list[str]:
    bad = [r for r in runs if not r.ok]
    if not bad:
        return []
    lines = ["Checks that failed:", ""]
    for r in bad:
        lines.append(
            f"- {r.kind}, {r.channel.value}, {r.design}, provider latency {r.latency:g} s, "
            f"round {r.round}: {'; '.join(r.problems)} (journal flushes failed: "
            f"{r.flush_failures})"
        )
    return [*lines, ""]


def summary_rows(
    faulted: list[Run], scenario: list[Run], ratios: list[dict[str, Any]], throughput: list[Run]
) -> list[str]:
    rows = []

    def told(runs: list[Run]) -> str:
        parts = []
        for r in runs:
            t = r.tally
            dup = f"{t.duplicates} dup"
            if r.channel is Channel.EMAIL:
                dup = f"{r.visible_duplicates} visible dup"
            elif r.channel is Channel.WECHAT:
                dup += f" (resends of {t.in_doubt['resent']} calls in doubt, by policy)"
            parts.append(f"{r.channel.value} {t.told}/{t.shoppers} told, {t.lost} lost, {dup}")
        return "; ".join(parts)

    if faulted:
        n = faulted[0].shoppers
        rows.append(
            f"| crash: {n:,}-shopper wave, 3 kill -9 + SIGTERM + broker flush "
            f"(`bench/crash.py`) | {told(faulted)} | nobody lost; SMS and email 0 duplicates "
            f"(email: same Message-ID) | {'yes' if all(r.ok for r in faulted) else 'no'} |"
        )
    if scenario:
        n = scenario[0].shoppers
        rows.append(
            f"| crash: {n:,} shoppers, two kill -9 + one broker flush | {told(scenario)} "
            f"| all told; SMS 0 dup, email 0 visible dup "
            f"| {'yes' if all(r.ok for r in scenario) else 'no'} |"
        )
    for latency, design in sorted({(item["latency"], item["design"]) for item in ratios}):
        items = [i for i in ratios if (i["latency"], i["design"]) == (latency, design)]
        what = "fakes answer at once" if latency == 0 else f"provider latency {latency:g} s"
        what += f"; vs {design}"
        figures = "; ".join(
            f"{i['channel']} {i['ratio']:.2f}x ({i['current']:.0f} vs {i['baseline']:.0f} msgs/s)"
            for i in items
        )
        met = all(i["ratio"] >= RATIO_TARGET for i in items)
        runs = [r for r in throughput if r.latency == latency]
        failed = [r for r in runs if not r.ok]
        if failed:
            figures += (
                f"; {len(failed)} of {len(runs)} uninterrupted runs failed a check "
                f"({'; '.join(f'{r.channel.value} {r.design}: {r.problems[0]}' for r in failed)})"
            )
        rows.append(
            f"| crash: throughput, recording per call vs recording at the end, {what} "
            f"| {figures} | >= {RATIO_TARGET}x | {'yes' if met else 'no'} |"
        )
    return rows


def section(
    args: argparse.Namespace,
    pg: dict[str, str],
    sources: tuple[str, str],
    baseline_file: str,
    body: list[str],
) -> str:
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    fast = ", ".join(f"{k.removeprefix('BACKINSTOCK_')}={v}" for k, v in FAST.items())
    return "\n".join([
        f"## {now:%Y-%m-%d} — crash safety and the cost of recording each provider call "
        "(PostgreSQL + Redis)", "",
        f"- command: `flock /tmp/backinstock-bench.lock "
        f"{shlex.join(['.venv/bin/python', 'bench/crash.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; source: {sources[0]}"
        + ("" if sources[0] == sources[1] else f" (at the end: {sources[1]})"),
        f"- machine: nproc={os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; shared with other jobs (host busy = all "
        "cores, 202 → worker exit)",
        f"- PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}, "
        f"fsync={pg['fsync']}, shared_buffers={pg['shared_buffers']}); Redis broker on "
        f"{REDIS_URL} (flushed before every run); all on this host",
        "- services per run: `backinstock serve` (API) and ONE `backinstock "
        f"{' '.join(WORKER_ARGS)}`, subprocesses; the worker is ready before the restock is "
        f"posted; settings as the suite's crash tests ({fast}), no client-side rate limit, "
        f"SMTP_CONNECTIONS={SMTP_CONNECTIONS} (the product's default and the "
        "batch-at-the-end code's fixed pool); senders' concurrency: SMS 20, WeChat 20",
        "- designs: **current** = this branch's code with its defaults; "
        "**this-code-at-the-end** = the same code told to record as the old design did "
        f"({', '.join(f'{k}={v}' for k, v in RECORDED_AT_THE_END.items())}: the first "
        "start marks the whole claim, the claim's last commit records every result), the "
        "cost of recording each call alone; **batch-at-the-end** = commit "
        f"{BASELINE} (claims 200, sends them all, records when the batch is done), from a "
        f"temporary `git worktree` run as `PYTHONPATH=<worktree>/src python -m backinstock` "
        f"(checked: backinstock resolves to {baseline_file}); its own database migrated by "
        "its own code (no migration 0007), the current design's a copy of it migrated on; "
        "the same shoppers (seeded with the service's row builder, one SKU, distinct "
        "contacts), the same fakes",
        "- fakes (tests/fakes, in this process): FakeTwilio (the twilio SDK's REST calls), "
        "FakeSMTP (aiosmtpd; aiosmtplib), FakeWeChat (httpx); `provider latency` = the "
        "fake's accept_delay: each message is accepted (counted) at once and answered that "
        "much later",
        "- msgs/s = shoppers / (the restock's 202 → the last message accepted by the fake); "
        "worker CPU = user+system of the worker's processes, PG CPU = the PostgreSQL "
        "backends connected to the run's database, both from the 202 to the worker's exit, "
        "per shopper",
        f"- throughput: {args.rounds} round(s), the designs alternating (ABC, then CBA), "
        "each on a fresh copy of its template database",
        f"- faults: at seeded random points (seed {args.seed}) between 10% and 80% of the "
        "wave, by messages accepted at the fake: kill -9 = SIGKILL of the worker's process "
        "group, then restarted; SIGTERM = to the worker's main process (drain, "
        "then restarted); flush = FLUSHDB of the broker's Redis database. `vs "
        "uninterrupted` = the faulted wave's msgs/s over the current design's median "
        "uninterrupted msgs/s at the same provider latency",
        "", *body, "",
    ])  # fmt: skip


# ---------------------------------------------------------------- main


class Templates:
    """Seeded template databases by (channel, shoppers), made once and copied per run."""

    def __init__(self, designs: list[Design]) -> None:
        self.designs = designs
        self._made: dict[tuple[Channel, int], Template] = {}

    async def get(self, channel: Channel, n: int, designs: list[Design]) -> Template:
        found = self._made.get((channel, n))
        if found is None or not {d.name for d in designs} <= found.databases.keys():
            found = await make_templates(channel, n, designs)
            self._made[(channel, n)] = found
        return found


async def bench(args: argparse.Namespace, designs: list[Design]) -> dict[str, list[Run]]:
    channels = [Channel(c) for c in args.channels.split(",") if c]
    sizes = [(0.0, args.throughput_shoppers)]
    if args.latency:
        sizes.append((args.latency, args.latency_shoppers))
    runs: dict[str, list[Run]] = {"throughput": [], "faulted": [], "scenario": []}
    templates, current = Templates(designs), designs[0]
    for channel in channels:
        started = time.monotonic()
        for latency, n in sizes if args.rounds else []:
            template = await templates.get(channel, n, designs)
            for rnd in range(1, args.rounds + 1):
                order = designs if rnd % 2 else list(reversed(designs))  # ABBA
                for design in order:
                    run = await one_run("throughput", channel, design, template, n, latency,
                                        [], rnd)  # fmt: skip
                    say(run)
                    runs["throughput"].append(run)
        for kind, n, kinds, seed, shuffle in (
            ("faulted", args.shoppers, FAULTED_KINDS, args.seed, True),
            ("scenario", args.scenario_shoppers, SCENARIO_KINDS, args.scenario_shoppers, False),
        ):  # the scenario's faults fall where the suite's test puts them (seed = shoppers)
            if not n:
                continue
            template = await templates.get(channel, n, [current])
            faults = faults_for(kinds, seed, n, shuffle)
            run = await one_run(kind, channel, current, template, n, args.fault_latency,
                                faults, 1)  # fmt: skip
            say(run)
            runs[kind].append(run)
        print(f"{channel.value}: {time.monotonic() - started:.0f} s", flush=True)
    return runs


def _stopped(*_: object) -> None:
    """SIGTERM: unwind, so that the services stop and the worktree and the databases are
    removed on the way out (a second SIGTERM must not cut that short)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default="sms,email,wechat")
    parser.add_argument(
        "--shoppers",
        type=int,
        default=20_000,
        help="the faulted wave (3 kill -9, 1 SIGTERM, 1 broker flush); 0: skip",
    )
    parser.add_argument(
        "--throughput-shoppers",
        type=int,
        default=5_000,
        help="shoppers per throughput run with the fakes answering at once",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.05,
        help="provider latency (s) of the second throughput measurement; 0: skip",
    )
    parser.add_argument(
        "--latency-shoppers",
        type=int,
        default=1_000,
        help="shoppers per throughput run with --latency",
    )
    parser.add_argument(
        "--fault-latency",
        type=float,
        default=0.0,
        help="provider latency (s) in the faulted and done-when runs",
    )
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds; 0: skip")
    parser.add_argument(
        "--scenario-shoppers",
        type=int,
        default=5_000,
        help="the done-when scenario's shoppers; 0: skip",
    )
    parser.add_argument("--seed", type=int, default=9, help="where the faults fall")
    parser.add_argument(
        "--database-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE <run database> SET NAME = VALUE for every run (a diagnosis, "
        "e.g. synchronous_commit=off)",
    )
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()  # fmt: skip
    SETTINGS.extend(args.database_setting)
    signal.signal(signal.SIGTERM, _stopped)
    configure_environment()
    OUT.mkdir(parents=True, exist_ok=True)
    pg = fresh_database(f"{DB}_probe")
    source_before = source_state(("src", "tests"))
    started = time.monotonic()
    with baseline_checkout(BASELINE) as checkout:
        designs = [
            Design("current", {}, journaled=True),
            Design("this-code-at-the-end", RECORDED_AT_THE_END, journaled=True),
            Design("batch-at-the-end", {"PYTHONPATH": str(checkout / "src")}, journaled=False),
        ]
        check_import(designs[0], ROOT / "src")
        baseline_file = check_import(designs[-1], checkout)
        baseline_file = re.sub(r"^.*/checkout/", "<worktree>/", baseline_file)
        try:
            runs = asyncio.run(bench(args, designs))
        finally:
            if not args.keep_databases:
                drop_databases()
    minutes = (time.monotonic() - started) / 60
    lines, ratios = throughput_rows(runs["throughput"], designs)
    body = [
        "Throughput, uninterrupted (current vs batch-at-the-end):", "", *lines, "",
        "Faults (current design):", "",
        *faulted_rows(runs["faulted"] + runs["scenario"], ratios), "",
        "Targets:", "", *verdicts(runs["faulted"], runs["scenario"], ratios), "",
        *problem_lines(runs["throughput"] + runs["faulted"] + runs["scenario"]),
        f"Whole script: {minutes:.1f} min.",
    ]  # fmt: skip
    print("\n" + "\n".join(body))
    every = runs["throughput"] + runs["faulted"] + runs["scenario"]
    if args.write:
        write_results(section(args, pg, (source_before, source_state(("src", "tests"))),
                              baseline_file, body))  # fmt: skip
        rows = summary_rows(runs["faulted"], runs["scenario"], ratios, runs["throughput"])
        set_summary_rows("crash:", rows)
        print(f"written to {RESULTS}")
    if not all(r.ok for r in every):
        print("\nCORRECTNESS CHECK FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
