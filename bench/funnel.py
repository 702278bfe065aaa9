"""The funnel over a million notifications on PostgreSQL: service query and HTTP request.

Once per run: a fresh database, migrated, bulk-seeded by server-side SQL (INSERT ...
SELECT generate_series; spread and skew from md5 of the row number, so every run seeds the
same rows; rows are written in time order, as a running service appends them), then
VACUUM ANALYZE. Then rounds: each case (all time, one SKU, one channel,
the last 7 days) is timed through ``backinstock.stats.service.funnel`` on a fresh session
and as ``GET /v1/stats/funnel`` through the app (httpx ASGITransport, a stats key), after a
warm-up of each. The baselines are measured in the same rounds: a bare
``SELECT count(*) FROM notifications`` on the same engine, and ``GET /healthz``.

    .venv/bin/python bench/funnel.py --notifications 1000000 --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2
from benchlib import PG, RESULTS, fresh_database, source_state
from sqlalchemy import event, text

from backinstock import db, migrations
from backinstock.auth import service as auth
from backinstock.auth.service import Scope
from backinstock.config import Settings
from backinstock.crypto import new_key_spec
from backinstock.main import create_app
from backinstock.ops.logging import configure_logging
from backinstock.runtime import Runtime
from backinstock.stats import service
from backinstock.stats.filters import Filters

DATABASE = "backinstock_bench_funnel"
SOURCES = ("src", "alembic")  # the figures depend on the queries and on the indexes
PG_SHOWN = ("server_version", "shared_buffers", "work_mem", "max_parallel_workers")
URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
TARGET_MS = 1000.0
SKUS, WAVES = 2000, 5000
TOP_SKU = "SKU-00000"  # the skew puts the most shoppers (and messages) here

# A reproducible uniform number in [0, 1) from a text: the first 32 bits of its md5.
UNIFORM = """CREATE FUNCTION bench_u(text) RETURNS float8 LANGUAGE sql IMMUTABLE AS
$$ SELECT ('x' || substr(md5($1), 1, 8))::bit(32)::bigint / 4294967296.0 $$"""
# Row g of n, at its place in the last half year (rows are written in time order).
MOMENT = """CREATE FUNCTION bench_t(bigint, bigint, text) RETURNS timestamptz LANGUAGE sql AS
$$ SELECT now() - (1 - ($1 + bench_u($3 || $1)) / $2) * interval '180 days' $$"""

SEED = [
    ("products", """
INSERT INTO products (sku, name, updated_at)
SELECT 'SKU-' || lpad(g::text, 5, '0'), '商品 ' || g, now() FROM generate_series(0, {skus} - 1) g
"""),
    # SKUs skewed (u^3: a few SKUs hold most shoppers); 70% SMS, 20% email, 10% WeChat;
    # 60% waiting, 25% notified, 5% converted, 5% unsubscribed, 5% expired; half a year.
    ("subscriptions", """
INSERT INTO subscriptions (id, sku, channel, contact_key_id, contact_blob, contact_index,
    locale, timezone, priority, priority_rank, status, notification_count, created_at,
    updated_at, wechat_consents)
SELECT md5('s' || g)::uuid,
    'SKU-' || lpad(floor({skus} * power(bench_u('k' || g), 3))::int::text, 5, '0'),
    (ARRAY['sms','sms','sms','sms','sms','sms','sms','email','email','wechat'])[1 + g % 10],
    'b1', decode(md5('c' || g) || md5('d' || g) || md5('e' || g), 'hex'),
    decode(md5('i' || g) || md5('j' || g), 'hex'), 'zh-CN', 'Asia/Shanghai', 'standard', 1,
    CASE WHEN g % 20 < 12 THEN 'waiting' WHEN g % 20 < 17 THEN 'notified'
         WHEN g % 20 = 17 THEN 'converted' WHEN g % 20 = 18 THEN 'unsubscribed'
         ELSE 'expired' END,
    1, c.at, c.at, 1
FROM generate_series(0, {subscriptions} - 1) g,
    LATERAL (SELECT bench_t(g, {subscriptions}, 't') AS at) c
"""),
    ("waves", """
INSERT INTO waves (id, sku, status, opened_at, closed_at, restock_id, step, target, planned,
    level)
SELECT md5('w' || g)::uuid,
    'SKU-' || lpad(floor({skus} * power(bench_u('wk' || g), 3))::int::text, 5, '0'),
    'closed', c.at, c.at + interval '1 day', md5('r' || g)::uuid, 3, 100, 100, 0
FROM generate_series(0, {waves} - 1) g,
    LATERAL (SELECT bench_t(g, {waves}, 'wt') AS at) c
"""),
    # Each subscription's messages fall in distinct waves (the unique key).
    # 95% restock, 5% follow-up; 93% sent, 3% failed, 2% pending, 2% cancelled; sent
    # 0.2-120 s after the step ran (mostly fast); SMS delivery reports 90% delivered, 5%
    # undelivered, 3% failed, 2% none; 20% of sent messages clicked.
    ("notifications", """
INSERT INTO notifications (id, subscription_id, wave_id, sku, kind, step, level, queue_size,
    channel, contact_rank, status, attempts, next_attempt_at, created_at, sent_at,
    delivery_status, clicked_at, click_count)
SELECT md5('n' || g)::uuid, s.id,
    md5('w' || ((g / {subscriptions} + (g % {subscriptions}) * 7) % {waves}))::uuid, s.sku,
    CASE WHEN g % 20 = 0 THEN 'followup' ELSE 'restock' END, 1, 10, 100, s.channel, 0,
    c.status, 1, c.created, c.created,
    CASE WHEN c.status = 'sent'
         THEN c.created + make_interval(secs => 0.2 + 120 * power(bench_u('l' || g), 4)) END,
    CASE WHEN c.status <> 'sent' OR s.channel <> 'sms' THEN NULL
         WHEN bench_u('d' || g) < 0.90 THEN 'delivered'
         WHEN bench_u('d' || g) < 0.95 THEN 'undelivered'
         WHEN bench_u('d' || g) < 0.98 THEN 'failed' END,
    CASE WHEN c.status = 'sent' AND bench_u('x' || g) < 0.2
         THEN c.created + interval '10 minutes' END,
    CASE WHEN c.status = 'sent' AND bench_u('x' || g) < 0.2 THEN 1 ELSE 0 END
FROM generate_series(0, {notifications} - 1) g
JOIN subscriptions s ON s.id = md5('s' || (g % {subscriptions}))::uuid
CROSS JOIN LATERAL (
    SELECT bench_t(g, {notifications}, 'a') AS created,
        CASE WHEN bench_u('st' || g) < 0.93 THEN 'sent' WHEN bench_u('st' || g) < 0.96
             THEN 'failed' WHEN bench_u('st' || g) < 0.98 THEN 'pending'
             ELSE 'cancelled' END AS status) c
"""),
    ("orders", """
INSERT INTO orders (id, order_id, currency, total, occurred_at, received_at, response)
SELECT md5('o' || g)::uuid, 'bench-' || g, CASE WHEN g % 20 = 0 THEN 'USD' ELSE 'CNY' END,
    (99 + (g % 5) * 100) * 10000, c.at, c.at, '{{}}'
FROM generate_series(0, {conversions} - 1) g,
    LATERAL (SELECT bench_t(g, {conversions}, 'ot') AS at) c
"""),
    ("conversions", """
INSERT INTO conversions (id, order_pk, subscription_id, sku, channel, method, revenue,
    currency, converted_at)
SELECT md5('v' || g)::uuid, o.id, s.id, s.sku, s.channel, 'token', o.total, o.currency,
    o.occurred_at
FROM generate_series(0, {conversions} - 1) g
JOIN orders o ON o.id = md5('o' || g)::uuid
JOIN subscriptions s ON s.id = md5('s' || ((g * 7919) % {subscriptions}))::uuid
"""),
    ("coupons", """
INSERT INTO coupons (id, code, subscription_id, sku, channel, issued_at, redeemed_at)
SELECT md5('q' || g)::uuid, 'BIS-BENCH' || g, s.id, s.sku, s.channel, c.at,
    CASE WHEN bench_u('qr' || g) < 0.25 THEN c.at + interval '2 days' END
FROM generate_series(0, {coupons} - 1) g
JOIN subscriptions s ON s.id = md5('s' || ((g * 31) % {subscriptions}))::uuid
CROSS JOIN LATERAL (SELECT bench_t(g, {coupons}, 'qt') AS at) c
"""),
]  # fmt: skip


@dataclass
class Sizes:
    notifications: int
    subscriptions: int
    conversions: int
    coupons: int
    skus: int = SKUS
    waves: int = WAVES


@dataclass
class Timings:
    """Milliseconds per case, one entry per round."""

    service: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    http: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tables: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    load: list[float] = field(default_factory=list)


# ---------------------------------------------------------------- database


def seed(sizes: Sizes) -> dict[str, float]:
    """Every table by one INSERT ... SELECT in the server; seconds per table."""
    seconds: dict[str, float] = {}
    conn = psycopg2.connect(dbname=DATABASE, **PG)
    with conn, conn.cursor() as cur:
        cur.execute(UNIFORM)
        cur.execute(MOMENT)
    for table, sql in SEED:
        started = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute(sql.format(**vars(sizes)))
        seconds[table] = time.perf_counter() - started
        print(f"seeded {table} in {seconds[table]:.1f} s", flush=True)
    conn.autocommit = True
    with conn.cursor() as cur:
        started = time.perf_counter()
        cur.execute("VACUUM ANALYZE")
        seconds["vacuum analyze"] = time.perf_counter() - started
        cur.execute("DROP FUNCTION bench_t(bigint, bigint, text)")
        cur.execute("DROP FUNCTION bench_u(text)")
    conn.close()
    return seconds


# ---------------------------------------------------------------- measuring


def cases(now: datetime) -> dict[str, Filters]:
    return {
        "all time": Filters(until=now),
        f"sku={TOP_SKU}": Filters(until=now, sku=TOP_SKU),
        "channel=email": Filters(until=now, channel="email"),
        "last 7 days": Filters(until=now, since=now - timedelta(days=7)),
    }


def query_params(f: Filters) -> dict[str, str]:
    params = {"until": f.until.isoformat()}
    if f.since:
        params["since"] = f.since.isoformat()
    if f.sku:
        params["sku"] = f.sku
    if f.channel:
        params["channel"] = f.channel
    return params


class StatementClock:
    """Milliseconds per statement, named by its first table, for the per-table breakdown."""

    def __init__(self, runtime: Runtime) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        engine = runtime.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        table = next((t for t in ("subscriptions", "notifications", "conversions", "coupons")
                      if f"FROM {t}" in statement), "other")  # fmt: skip
        self.spent[table] += 1000 * (time.perf_counter() - conn.info.pop("bench_started"))


async def timed_service(runtime: Runtime, filters: Filters) -> float:
    started = time.perf_counter()
    async with db.transaction(runtime.sessions) as session:
        await service.funnel(session, filters, None)
    return 1000 * (time.perf_counter() - started)


async def timed_count(runtime: Runtime) -> float:
    started = time.perf_counter()
    async with db.transaction(runtime.sessions) as session:
        await session.scalar(text("SELECT count(*) FROM notifications"))
    return 1000 * (time.perf_counter() - started)


async def timed_get(client: httpx.AsyncClient, path: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    response = await client.get(path, params=params)
    elapsed = 1000 * (time.perf_counter() - started)
    if response.status_code != 200:
        sys.exit(f"{path} answered {response.status_code}: {response.text}")
    return elapsed


async def measure(rounds: int) -> tuple[Timings, dict[str, Any]]:
    settings = Settings.from_env()
    runtime = Runtime.create(settings)
    async with db.transaction(runtime.sessions) as session:
        key = await auth.create_key(session, f"bench-{time.time_ns()}", [Scope.STATS])
    app = create_app(runtime=runtime)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    timings, now = Timings(), datetime.now(UTC)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", headers=headers, timeout=120
        ) as client:
            sample = (
                await client.get("/v1/stats/funnel", params={"until": now.isoformat()})
            ).json()
            for filters in cases(now).values():  # warm-up: caches, plans, key cache
                await timed_service(runtime, filters)
                await timed_get(client, "/v1/stats/funnel", query_params(filters))
            clock = StatementClock(runtime)
            for i in range(1, rounds + 1):
                timings.load.append(os.getloadavg()[0])
                timings.service["baseline: SELECT count(*) FROM notifications"].append(
                    await timed_count(runtime)
                )
                timings.http["baseline: GET /healthz"].append(
                    await timed_get(client, "/healthz", {})
                )
                for name, filters in cases(now).items():
                    clock.spent.clear()
                    timings.service[name].append(await timed_service(runtime, filters))
                    if name == "all time":
                        for table, ms in clock.spent.items():
                            timings.tables[table].append(ms)
                    timings.http[name].append(
                        await timed_get(client, "/v1/stats/funnel", query_params(filters))
                    )
                done = [f"{n} {v[-1]:.0f}/{timings.http[n][-1]:.0f} ms"
                        for n, v in timings.service.items() if n in timings.http]  # fmt: skip
                print(f"round {i} (service/HTTP): " + ", ".join(done), flush=True)
    finally:
        await runtime.close()
    return timings, sample


# ---------------------------------------------------------------- reporting


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def report(timings: Timings, rounds: int) -> list[str]:
    header = "| case | " + " | ".join(f"r{i}" for i in range(1, rounds + 1))
    lines = ["Service query (`stats.service.funnel` on a fresh session), ms:", "",
             header + " | median |", "|---|" + "---:|" * (rounds + 1)]  # fmt: skip
    for name, values in timings.service.items():
        cells = " | ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name} | {cells} | **{median(values):.0f}** |")
    lines += ["", "HTTP (`GET /v1/stats/funnel` through the app, ASGITransport), ms:", "",
              header + " | median |", "|---|" + "---:|" * (rounds + 1)]  # fmt: skip
    for name, values in timings.http.items():
        cells = " | ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name} | {cells} | **{median(values):.0f}** |")
    lines += ["", "All-time funnel by statement (median ms): " + ", ".join(
        f"{t} {median(v):.0f}" for t, v in sorted(timings.tables.items()))]  # fmt: skip
    return lines


def verdict(timings: Timings) -> tuple[str, float, str]:
    worst_name, worst = max(
        ((n, median(v)) for n, v in timings.http.items() if not n.startswith("baseline")),
        key=lambda item: item[1],
    )
    ok = worst < TARGET_MS
    return ("met" if ok else "NOT met"), worst, worst_name


def section(args: argparse.Namespace, sizes: Sizes, pg: dict[str, str],
            seeded: dict[str, float], sample: dict[str, Any], lines: list[str],
            timings: Timings) -> str:  # fmt: skip
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    word, worst, worst_name = verdict(timings)
    counts = ", ".join(f"{k} {sample[k]:,}" for k in ("notified", "delivered", "failed",
                       "clicked", "converted", "subscribed", "coupons_issued"))  # fmt: skip
    return "\n".join([
        f"## {now:%Y-%m-%d} — funnel over {sizes.notifications:,} notifications (PostgreSQL)",
        "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/funnel.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; source: {source_state(SOURCES)}",
        f"- machine: 2 shared cores (nproc={os.cpu_count()}, {cpu}; other jobs run on this "
        f"host: 1-minute load average {min(timings.load):.1f}-{max(timings.load):.1f} during "
        f"the rounds), Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}",
        f"- PostgreSQL {pg['server_version']} (shared_buffers={pg['shared_buffers']}, "
        f"work_mem={pg['work_mem']}, max_parallel_workers={pg['max_parallel_workers']}), "
        f"database {DATABASE}, migrated to head",
        f"- seeded by INSERT ... SELECT generate_series: {sizes.notifications:,} notifications "
        f"(95% restock, 93% sent, SMS delivery reports, 20% clicked; half a year), "
        f"{sizes.subscriptions:,} subscriptions on {sizes.skus:,} SKUs (skewed: "
        f"{TOP_SKU} has the most), {sizes.waves:,} waves, {sizes.conversions:,} orders and "
        f"conversions (CNY and USD), {sizes.coupons:,} coupons; then VACUUM ANALYZE. Seed "
        "seconds: " + ", ".join(f"{t} {s:.1f}" for t, s in seeded.items()),
        f"- the all-time funnel counted: {counts}",
        f"- per round, in this order: the baselines, then for each case the service call "
        f"and the HTTP request; {args.rounds} rounds after one warm-up of each case; one "
        "process (the app runs in this script's event loop), pool_size 10",
        "", *lines, "",
        f"Target: funnel over {sizes.notifications:,} notifications < {TARGET_MS:.0f} ms "
        f"(median, slowest case over HTTP: {worst_name}, {worst:.0f} ms) → **{word}**",
        "",
    ])  # fmt: skip


def write_results(text_: str, summary: str) -> None:
    """Append the section and put the funnel's line in the summary table at the top."""
    lines = (RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n").rstrip("\n")
    rows = [ln for ln in lines.split("\n") if not ln.startswith("| funnel")]
    header = rows.index("| benchmark | figure | target | met |")
    end = header + 2
    while end < len(rows) and rows[end].startswith("|"):
        end += 1
    rows.insert(end, summary)
    RESULTS.write_text("\n".join(rows) + "\n\n" + text_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-seed", action="store_true",
                        help="reuse the database seeded by an earlier run")  # fmt: skip
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    n = args.notifications
    sizes = Sizes(notifications=n, subscriptions=max(1, n // 3), conversions=max(1, n // 50),
                  coupons=max(1, n // 100))  # fmt: skip
    os.environ.update(
        BACKINSTOCK_DATABASE_URL=URL,
        BACKINSTOCK_REDIS_URL="",
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_LOG_LEVEL="WARNING",
    )
    configure_logging("WARNING", json=False)  # no request log lines between the rounds
    seeded: dict[str, float] = {}
    if args.skip_seed:
        conn = psycopg2.connect(dbname="postgres", **PG)
        with conn.cursor() as cur:
            pg = {}
            for name in ("server_version", "shared_buffers", "work_mem", "max_parallel_workers"):
                cur.execute(f"SHOW {name}")
                pg[name] = cur.fetchone()[0]
        conn.close()
    else:
        pg = fresh_database(
            DATABASE, ("server_version", "shared_buffers", "work_mem", "max_parallel_workers")
        )
        migrations.upgrade(URL)
        seeded = seed(sizes)
    timings, sample = asyncio.run(measure(args.rounds))
    lines = report(timings, args.rounds)
    word, worst, worst_name = verdict(timings)
    print("\n" + "\n".join(lines))
    print(f"\nslowest case over HTTP: {worst_name} {worst:.0f} ms → {word}")
    if args.write:
        all_time = median(timings.http["all time"])
        summary = (
            f"| funnel over {n / 1e6:g}M notifications, PostgreSQL (`bench/funnel.py`) "
            f"| {all_time:.0f} ms all time over HTTP, slowest case {worst:.0f} ms "
            f"({worst_name}); count(*) alone "
            f"{median(timings.service['baseline: SELECT count(*) FROM notifications']):.0f} ms "
            f"| < 1 s | {'yes' if word == 'met' else 'no'} |"
        )
        write_results(section(args, sizes, pg, seeded, sample, lines, timings), summary)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
