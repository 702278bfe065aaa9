"""The pipeline figures /metrics reads, over a million notifications on PostgreSQL.

Once per run: a fresh database, migrated, bulk-seeded by server-side SQL (INSERT ...
SELECT generate_series): 1,000,000 notifications in 5 waves of 200,000 shoppers (the last
two open), 94% sent history, 3% pending (two thirds of them due), 0.2% being sent, 2.8%
failed; 70% SMS, 20% email, 10% WeChat; 100,000 stock events from 20 locations; then
VACUUM ANALYZE. Then rounds, each case after a warm-up:

- ``read figures``: every query of one refresh (``stats.pipeline.read_figures``) and the
  wave timer's probes of the two open waves, on a fresh session;
- ``GET /metrics, read``: the whole scrape through the app with the figures read anew;
- ``GET /metrics, cached``: a scrape within METRICS_CACHE_SECONDS of the last read;
- baselines in the same rounds: ``SELECT count(*) FROM notifications`` (what a figure
  without its index would cost: a pass over the table) and ``GET /healthz``.

    .venv/bin/python bench/pipeline.py --notifications 1000000 --rounds 7 --write
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime

import httpx
import psycopg2
from benchlib import PG, fresh_database, source_state, write_results
from sqlalchemy import text

from backinstock import migrations
from backinstock.config import MetricsSettings, Settings
from backinstock.crypto import new_key_spec
from backinstock.main import create_app
from backinstock.ops.logging import configure_logging
from backinstock.runtime import Runtime
from backinstock.stats import pipeline

DATABASE = "backinstock_opsbench_pipeline"
URL = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}"
SUBSCRIPTIONS = 200_000
BASELINE = "baseline: SELECT count(*) FROM notifications"
HEALTHZ = "baseline: GET /healthz"

SEED = [
    ("subscriptions", """
INSERT INTO subscriptions (id, sku, channel, contact_key_id, contact_blob, contact_index,
    locale, timezone, priority, priority_rank, status, notification_count, created_at,
    updated_at, wechat_consents)
SELECT md5('s' || g)::uuid, 'SKU-' || (g % 5),
    (ARRAY['sms','sms','sms','sms','sms','sms','sms','email','email','wechat'])[1 + g % 10],
    'b1', decode(md5('c' || g), 'hex'), decode(md5('i' || g) || md5('j' || g), 'hex'),
    'zh-CN', 'Asia/Shanghai', 'standard', 1, 'notified', 1, now(), now(), 1
FROM generate_series(0, {subscriptions} - 1) g
"""),
    ("waves", """
INSERT INTO waves (id, sku, status, opened_at, closed_at, restock_id, step, target, planned,
    level)
SELECT md5('w' || g)::uuid, 'SKU-' || g, CASE WHEN g < 3 THEN 'closed' ELSE 'open' END,
    now() - make_interval(days => 5 - g), CASE WHEN g < 3 THEN now() END,
    md5('r' || g)::uuid, 1, {subscriptions}, {subscriptions}, 100
FROM generate_series(0, {waves} - 1) g
"""),
    # Row g: shopper g % subscriptions in wave g / subscriptions (the unique key holds).
    ("notifications", """
INSERT INTO notifications (id, subscription_id, wave_id, sku, kind, step, level, queue_size,
    channel, contact_rank, status, attempts, next_attempt_at, created_at, sent_at)
SELECT md5('n' || g)::uuid, md5('s' || (g % {subscriptions}))::uuid,
    md5('w' || (g / {subscriptions}))::uuid, 'SKU-' || (g / {subscriptions}), 'restock', 1, 100,
    {subscriptions},
    (ARRAY['sms','sms','sms','sms','sms','sms','sms','email','email','wechat'])[1 + g % 10],
    0, c.status, 1,
    CASE WHEN c.status = 'pending' AND g % 3 = 0 THEN now() + interval '1 hour'
         ELSE now() - make_interval(secs => ({notifications} - g) / 10.0) END,
    now() - make_interval(secs => ({notifications} - g) / 10.0),
    CASE WHEN c.status = 'sent' THEN now() - make_interval(secs => ({notifications} - g) / 10.0)
    END
FROM generate_series(0, {notifications} - 1) g
CROSS JOIN LATERAL (
    SELECT CASE WHEN g % 1000 < 940 THEN 'sent' WHEN g % 1000 < 970 THEN 'pending'
                WHEN g % 1000 < 972 THEN 'sending' ELSE 'failed' END AS status) c
"""),
    ("restock_events", """
INSERT INTO restock_events (id, location, event_id, sku, available, occurred_at, received_at,
    applied, level_after, waiting, first_wave)
SELECT md5('e' || g)::uuid, 'feed-' || lpad((g % 20)::text, 2, '0'), 'ev-' || g,
    'SKU-' || (g % 5), 10, now() - make_interval(secs => {events} - g),
    now() - make_interval(secs => {events} - g), true, 10, 0, 0
FROM generate_series(0, {events} - 1) g
"""),
]  # fmt: skip


def seed(notifications: int) -> dict[str, float]:
    sizes = {
        "notifications": notifications,
        "subscriptions": SUBSCRIPTIONS,
        "waves": max(1, notifications // SUBSCRIPTIONS),
        "events": 100_000,
    }
    seconds: dict[str, float] = {}
    conn = psycopg2.connect(dbname=DATABASE, **PG)
    for table, sql in SEED:
        started = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute(sql.format(**sizes))
        seconds[table] = time.perf_counter() - started
        print(f"seeded {table} in {seconds[table]:.1f} s", flush=True)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()
    return seconds


async def timed(work: object) -> float:
    started = time.perf_counter()
    await work  # type: ignore[misc]
    return 1000 * (time.perf_counter() - started)


async def read_all(runtime: Runtime, timer: pipeline.WaveTimer) -> None:
    async with runtime.sessions() as session:
        await pipeline.read_figures(session, runtime.settings, datetime.now(UTC))
        await timer.advance(session, datetime.now(UTC))


async def count_all(runtime: Runtime) -> None:
    async with runtime.sessions() as session:
        await session.scalar(text("SELECT count(*) FROM notifications"))


async def get(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    if response.status_code != 200:
        sys.exit(f"{path} answered {response.status_code}")


async def measure(rounds: int) -> tuple[dict[str, list[float]], str]:
    settings = Settings.from_env()
    runtime = Runtime.create(settings)
    timer = pipeline.WaveTimer(
        pipeline.collector().first_message, pipeline.collector().last_message
    )
    # One app reads the figures at every scrape (a cache of 0 s), one keeps them 5 s.
    uncached = Runtime.create(
        dataclasses.replace(settings, metrics=MetricsSettings(metrics_cache_seconds=0))
    )
    cached = Runtime.create(settings)
    timings: dict[str, list[float]] = defaultdict(list)
    reading = httpx.ASGITransport(app=create_app(runtime=uncached))
    caching = httpx.ASGITransport(app=create_app(runtime=cached))
    try:
        async with (
            httpx.AsyncClient(transport=reading, base_url="http://bench") as a,
            httpx.AsyncClient(transport=caching, base_url="http://bench") as c,
        ):
            for _ in range(2):  # warm-up: plans, pools, the timer's first discovery
                await read_all(runtime, timer)
                await get(a, "/metrics")
                await get(c, "/metrics")
                await count_all(runtime)
                await get(a, "/healthz")
            sample = (await a.get("/metrics")).text
            for i in range(1, rounds + 1):
                timings["load"].append(os.getloadavg()[0])
                timings["read figures"].append(await timed(read_all(runtime, timer)))
                timings["GET /metrics, read"].append(await timed(get(a, "/metrics")))
                timings["GET /metrics, cached"].append(await timed(get(c, "/metrics")))
                timings[BASELINE].append(await timed(count_all(runtime)))
                timings[HEALTHZ].append(await timed(get(a, "/healthz")))
                done = [f"{k} {v[-1]:.1f}" for k, v in timings.items() if k != "load"]
                print(f"round {i}: " + ", ".join(done), flush=True)
    finally:
        for rt in (runtime, uncached, cached):
            await rt.close()
    return timings, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.update(
        {
            "BACKINSTOCK_DATABASE_URL": URL,
            "BACKINSTOCK_REDIS_URL": "",
            "BACKINSTOCK_ENCRYPTION_KEYS": new_key_spec("b1"),
            "BACKINSTOCK_BLIND_INDEX_KEY": new_key_spec("b1"),
            "BACKINSTOCK_TOKEN_KEY": new_key_spec("b1"),
        }
    )
    configure_logging("WARNING", json=False)
    pg = fresh_database(DATABASE)
    migrations.upgrade(URL)
    seeded = seed(args.notifications)
    timings, sample = asyncio.run(measure(args.rounds))
    medians = {k: statistics.median(v) for k, v in timings.items()}
    rows = [
        f"| {name} | {medians[name]:.1f} | {min(v):.1f} | {max(v):.1f} |"
        for name, v in timings.items()
        if name != "load"
    ]
    shown = [
        line
        for line in sample.splitlines()
        if line.startswith(
            ("backinstock_notifications{", "backinstock_notifications_due", "backinstock_oldest")
        )
    ]
    command = "python bench/pipeline.py " + shlex.join(sys.argv[1:])
    text_ = "\n".join(
        [
            f"## Pipeline figures on /metrics, {args.notifications:,} notifications "
            f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
            "",
            f"- command: `{command}`; code at {source_state(('src', 'alembic'))}",
            f"- host: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
            f"(load average {min(timings['load']):.1f}–{max(timings['load']):.1f} during the "
            f"rounds); PostgreSQL {pg['server_version']}, shared_buffers {pg['shared_buffers']}",
            "- seeded (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seeded.items()),
            f"- {args.rounds} rounds, each case once per round after a warm-up; ms, median "
            "(min–max)",
            "",
            "| case | median ms | min | max |",
            "|---|---|---|---|",
            *rows,
            "",
            f"**read / count(*) baseline = {medians['read figures'] / medians[BASELINE]:.2f}x**"
            f"; a cached scrape costs {medians['GET /metrics, cached']:.1f} ms "
            f"({medians['GET /metrics, cached'] / medians[HEALTHZ]:.1f}x /healthz)",
            "",
            "What the figures were (one scrape):",
            "",
            "```",
            *shown,
            "```",
            "",
        ]
    )
    print(text_)
    if args.write:
        write_results(text_)


if __name__ == "__main__":
    main()
