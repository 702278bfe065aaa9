"""POST /v1/subscriptions against two baselines, on PostgreSQL + Redis.

The baselines (bench/bare_app.py): **thin**, the thinnest honest FastAPI endpoint (a 3-field
pydantic model, a pooled connection without pre-ping or ORM session, one INSERT … ON
CONFLICT DO NOTHING RETURNING), the target's denominator; and **bare**, a one-row insert
through an ORM session with the service's engine settings (the earlier baseline). Each app
runs under uvicorn (1 process) on this host, on a fresh database; wrk loads them in
alternating rounds (thin, bare, subscribe, thin, ...) and the medians are compared. Every
request is a new contact (spread over 50 SKUs); any non-201 answer or socket error aborts.

Then the CPU of each part of a subscribe request is measured in this process, on the
service's own functions: parsing and validation, contact normalisation, sealing, blind
index, the rate-limit call to Redis, and the database statements.

    .venv/bin/python bench/subscribe.py --rounds 5 --duration 10 --write
    .venv/bin/python bench/subscribe.py --rounds 5 --duration 10 --queued 2000 --write

The second starts with 2,000 shoppers already waiting on each SKU: a new subscription's
place must not cost more as its queue grows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psycopg2
from benchlib import (
    BENCH,
    PG,
    RESULTS,
    cpu_seconds,
    free_port,
    fresh_database,
    set_summary_rows,
    write_results,
)

from backinstock import db
from backinstock.crypto import new_key_spec

OUT = BENCH / "out"  # server logs (git-ignored)
DATABASE = "backinstock_bench"
REDIS_URL = "redis://127.0.0.1:6379/10"  # below the suite's 15-13 (tests/conftest.py)
HIGH_RATE = "100000000/minute"  # the limiter runs (a Redis round trip) but never refuses
STRIDE = 1_000_000  # contact numbers reserved per wrk run
BACKINSTOCK = str(Path(sys.executable).parent / "backinstock")  # the venv's console script


@dataclass
class Target:
    name: str
    path: str
    key: str | None
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    rounds: list[dict[str, float]] = field(default_factory=list)


def count_rows(table: str) -> int:
    with psycopg2.connect(dbname=DATABASE, **PG) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


def queue_up(per_sku: int) -> None:
    """``per_sku`` shoppers already waiting on each of the wrk script's 50 SKUs (registered a
    day ago, so every new one queues behind them), then VACUUM ANALYZE: the queue's length
    is what a subscribe's place may depend on, not the size of the bench's own runs."""
    if per_sku <= 0:
        return
    with psycopg2.connect(dbname=DATABASE, **PG) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO subscriptions (id, sku, channel, contact_index, locale, priority, "
            "priority_rank, status, notification_count, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'TSHIRT-' || lpad(s::text, 2, '0'), 'sms', "
            "sha256(('queued-' || s || '-' || i)::bytea), 'zh-CN', 'standard', 1, 'waiting', "
            "0, now() - interval '1 day', now() - interval '1 day' "
            "FROM generate_series(0, 49) AS s, generate_series(1, %s) AS i",
            (per_sku,),
        )
    conn = psycopg2.connect(dbname=DATABASE, **PG)
    try:
        conn.autocommit = True  # VACUUM runs outside a transaction block
        conn.cursor().execute("VACUUM ANALYZE subscriptions")
    finally:
        conn.close()


def service_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env.update(
        BACKINSTOCK_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
        BACKINSTOCK_REDIS_URL=REDIS_URL,
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_ALLOWED_LINK_HOSTS="shop.example",
        BACKINSTOCK_RATE_LIMIT_PER_IP=HIGH_RATE,
        BACKINSTOCK_RATE_LIMIT_PER_CONTACT=HIGH_RATE,
        BACKINSTOCK_LOG_LEVEL="WARNING",
        BENCH_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
    )
    return env


def cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([BACKINSTOCK, *argv], env=env, cwd=OUT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"backinstock {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def start(name: str, path: str, key: str | None, cmd: list[str], env: dict[str, str]) -> Target:
    port = free_port()
    log = OUT / f"{name}.log"
    argv = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=OUT, stdout=sink, stderr=subprocess.STDOUT)
    target = Target(name, path, key, proc, port, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(target, "exited during startup")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return target
        except OSError:
            time.sleep(0.2)
    fail(target, "did not answer /healthz within 30 s")
    raise AssertionError  # unreachable


def fail(target: Target, why: str) -> None:
    if target.proc.poll() is None:
        target.proc.kill()
    tail = target.log.read_text(errors="replace")[-3000:]
    sys.exit(f"{target.name}: {why}\n--- {target.log} (tail) ---\n{tail}")


def wrk(target: Target, base: int, args: argparse.Namespace, seconds: int) -> dict[str, float]:
    cmd = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
        "-s", str(BENCH / "subscribe.lua"), f"http://127.0.0.1:{target.port}",
        "--", target.path, str(base), str(args.threads), *([target.key] if target.key else []),
    ]  # fmt: skip
    cpu = cpu_seconds(target.proc.pid)
    done = subprocess.run(cmd, capture_output=True, text=True)
    cpu = cpu_seconds(target.proc.pid) - cpu
    match = re.search(r"^BENCH_JSON (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not match:
        sys.exit(f"wrk failed on {target.name}:\n{done.stdout}\n{done.stderr}")
    result: dict[str, float] = json.loads(match.group(1))
    result["cpu_ms"] = 1000 * cpu / max(result["requests"], 1)  # server CPU per request
    if result["non201"] or result["socket_errors"] or result["timeouts"]:
        fail(target, f"errors during the run: {result}")
    if result["requests"] >= STRIDE:
        sys.exit("more requests than contact numbers reserved per run; raise STRIDE")
    return result


COLUMNS = {"rps": "{:.1f}", "p50_ms": "{:.1f}", "p99_ms": "{:.1f}", "cpu_ms": "{:.2f}"}
TARGET = 0.6  # subscribe / thin, median req/s


def medians(target: Target) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in target.rounds) for k in COLUMNS}


def table(thin: Target, bare: Target, sub: Target) -> tuple[list[str], float]:
    """The per-round table and the target's ratio (subscribe / thin, median req/s)."""

    def cells(rows: tuple[dict[str, float], ...], bold: str = "") -> str:
        return " | ".join(bold + f.format(r[k]) + bold for r in rows for k, f in COLUMNS.items())

    head = " | ".join(f"{t.name} req/s | p50 ms | p99 ms | CPU ms/req" for t in (thin, bare, sub))
    lines = [
        f"| round | {head} | subscribe / thin | subscribe / bare |",
        "|---|" + "---:|" * (4 * 3 + 2),
    ]
    for i, rows in enumerate(zip(thin.rounds, bare.rounds, sub.rounds, strict=True), start=1):
        t, b, s = rows
        lines.append(f"| {i} | {cells(rows)} | {s['rps'] / t['rps']:.2f} | "
                     f"{s['rps'] / b['rps']:.2f} |")  # fmt: skip
    med = (medians(thin), medians(bare), medians(sub))
    ratio, vs_bare = med[2]["rps"] / med[0]["rps"], med[2]["rps"] / med[1]["rps"]
    lines.append(f"| median | {cells(med, '**')} | **{ratio:.2f}** | **{vs_bare:.2f}** |")
    verdict = "met" if ratio >= TARGET else "NOT met"
    lines += [
        "",
        f"**subscribe / thin = {ratio:.2f}x** (median req/s; target >= {TARGET}x: {verdict}); "
        f"subscribe / bare = {vs_bare:.2f}x; CPU per request: thin {med[0]['cpu_ms']:.2f} ms, "
        f"bare {med[1]['cpu_ms']:.2f} ms, subscribe {med[2]['cpu_ms']:.2f} ms",
    ]
    return lines, ratio


def section(args: argparse.Namespace, pg: dict[str, str], lines: list[str], rows: str) -> str:
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    return "\n".join([
        f"## {now:%Y-%m-%d} — subscribe vs the thin and bare inserts (PostgreSQL + Redis)", "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/subscribe.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc={os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}, "
        f"fsync={pg['fsync']}, shared_buffers={pg['shared_buffers']}); Redis limiter on "
        f"{REDIS_URL}",
        f"- servers: uvicorn, 1 process each, loop/http auto ({loop}/{http}), access log "
        "off; pool_size=10, max_overflow=10 (thin: no pre-ping); fresh database per run",
        f"- subscribe: BACKINSTOCK_LOG_LEVEL=WARNING, rate limits {HIGH_RATE} per IP and per "
        "contact (checked in Redis, never refusing); every request a new contact, 50 SKUs"
        + (f", {args.queued:,} already waiting on each" if args.queued else ""),
        f"- load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
        f"(bench/subscribe.lua), {args.warmup} s warm-up per server, {args.rounds} alternating "
        "rounds thin/bare/subscribe; the same body for all (thin parses sku, channel and "
        "contact; bare sku and contact)",
        "- CPU ms/req: user+system CPU of the server process during the run / requests",
        f"- {rows}", "", *lines, "",
    ])  # fmt: skip


# ---------------------------------------------------------------- CPU per part


BODY = (
    '{{"sku":"TSHIRT-{sku:02d}","channel":"sms","contact":"+86139{n:08d}","locale":"zh-CN",'
    '"timezone":"Asia/Shanghai","name":"张女士","priority":"standard",'
    '"product":{{"name":"红色T恤 M","url":"https://shop.example/p/123"}}}}'
)  # the wrk script's body (bench/subscribe.lua), on numbers wrk does not use


def part_lines(env: dict[str, str], calls: int) -> list[str]:
    """CPU per call of each part of a subscribe request, timed in this process on the
    service's own functions (process time, so waits for Redis and PostgreSQL count only
    for the client-side work they cost)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return asyncio.run(_time_parts(calls))
    finally:
        os.environ.clear()
        os.environ.update(saved)


async def _time_parts(calls: int) -> list[str]:
    from backinstock import identity
    from backinstock.config import Settings
    from backinstock.contacts import Channel
    from backinstock.flows import optin
    from backinstock.ratelimit import Hit
    from backinstock.runtime import Runtime
    from backinstock.subscriptions.schemas import SubscribedOut, SubscriptionCreate
    from backinstock.subscriptions.service import (
        Terms,
        _NewSubscription,
        normalize_contact,
    )

    runtime = Runtime.create(Settings.from_env())
    settings, keys = runtime.settings, runtime.keys
    terms = Terms.secret(settings, Channel.SMS)
    bodies = [BODY.format(sku=i % 50, n=i) for i in range(calls)]
    payloads = [SubscriptionCreate.model_validate_json(b) for b in bodies]
    primaries = [normalize_contact(settings, "contact", p.channel, p.contact) for p in payloads]
    parts: list[tuple[str, float]] = []

    def timed(name: str, run: Any) -> None:
        started = time.process_time()
        for i in range(calls):
            run(i)
        parts.append((name, 1000 * (time.process_time() - started) / calls))

    async def timed_async(name: str, run: Any) -> None:
        started = time.process_time()
        for i in range(calls):
            await run(i)
        parts.append((name, 1000 * (time.process_time() - started) / calls))

    timed("parse and validate the body (pydantic)",
          lambda i: SubscriptionCreate.model_validate_json(bodies[i]))  # fmt: skip
    timed("normalise the contact (phonenumbers)",
          lambda i: normalize_contact(settings, "contact", payloads[i].channel,
                                      payloads[i].contact))  # fmt: skip
    timed("blind index (HMAC-SHA256)", lambda i: identity.candidates(keys, primaries[i]))
    timed(
        "seal the contact and profile, build the row (AES-GCM)",
        lambda i: _NewSubscription.build(keys, payloads[i], primaries[i], b"x" * 32, terms),
    )
    assert runtime.limiter is not None
    limiter = runtime.limiter

    async def limits(i: int) -> None:
        rate = terms.per_contact or terms.per_client
        assert rate is not None
        await limiter.hit_all([Hit(f"ip:bench:{i % 7}", rate), Hit(f"contact:{i}", rate)])

    await timed_async(
        "rate limits: per client and per contact, in one Redis call (client side)", limits
    )

    async def whole(i: int) -> None:
        async with db.transaction_on_connection(runtime.engine) as session:  # the endpoint's
            requested = await optin.subscribe(
                session, settings, keys, runtime.limiter, runtime.products,
                SubscriptionCreate.model_validate_json(BODY.format(sku=i % 50, n=calls + i)),
                client="ip:bench", terms=terms, now=runtime.clock.now(),
            )  # fmt: skip
        SubscribedOut.model_construct(**dict(requested.out), substitutes=[]).model_dump_json()

    await timed_async("the whole service call: all of the above, the database "
                      "statements and the answer's JSON", whole)  # fmt: skip
    await runtime.close()
    named = sum(ms for _, ms in parts[:-1])
    rows = [f"| {name} | {ms:.3f} |" for name, ms in parts]
    rows.append(f"| of which the database (connection, statement, commit): the rest | "
                f"{parts[-1][1] - named:.3f} |")  # fmt: skip
    return [
        f"CPU per part of a subscribe request, in this process ({calls} calls each):",
        "",
        "| part | CPU ms/call |",
        "|---|---:|",
        *rows,
        "",
        "The server's CPU per request beyond the whole service call is the HTTP server, "
        "FastAPI's routing and dependencies (the API key's check) and the middleware.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=5, help="seconds, once per server")
    parser.add_argument("--part-calls", type=int, default=2000, help="calls per part timed")
    parser.add_argument(
        "--queued", type=int, default=0, help="shoppers waiting on each SKU before the rounds"
    )
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")

    OUT.mkdir(exist_ok=True)
    pg = fresh_database(DATABASE)
    env = service_env()
    cli(env, "migrate")
    key = cli(env, "keys", "create", "--name", "bench", "--scope", "subscribe").split()[-1]
    queue_up(args.queued)
    bare_app = [sys.executable, str(BENCH / "bare_app.py")]
    targets: list[Target] = []
    try:
        targets.append(start("thin", "/thin", None, bare_app, env))
        targets.append(start("bare", "/bare", None, bare_app, env))
        targets.append(start("subscribe", "/v1/subscriptions", key, [BACKINSTOCK, "serve"], env))
        runs = 0
        for target in targets:
            wrk(target, runs * STRIDE, args, args.warmup)
            runs += 1
        for r in range(args.rounds):
            for target in targets:
                target.rounds.append(wrk(target, runs * STRIDE, args, args.duration))
                runs += 1
                t = target.rounds[-1]
                figures = f"{t['rps']:.1f} req/s  p50 {t['p50_ms']:.1f}  p99 {t['p99_ms']:.1f} ms"
                figures += f"  CPU {t['cpu_ms']:.2f} ms/req"
                print(f"round {r + 1} {target.name:>9}: {figures}", flush=True)
    finally:
        for target in targets:
            target.proc.terminate()
            target.proc.wait(timeout=15)
    rows = ", ".join(f"{t}={count_rows(t)}" for t in ("thin_rows", "bare_rows", "subscriptions"))
    rows = f"rows after the run: {rows}"
    lines, ratio = table(*targets)
    parts = part_lines(env, args.part_calls)
    print("\n" + "\n".join([*lines, "", *parts]) + f"\n{rows}")
    if args.write:
        write_results(section(args, pg, [*lines, "", *parts], rows))
        thin, bare, sub = (medians(t) for t in targets)
        set_summary_rows("subscribe vs", [
            f"| subscribe vs the thin insert, PostgreSQL + Redis (`bench/subscribe.py`) | "
            f"{ratio:.2f}x ({sub['rps']:.0f} vs {thin['rps']:.0f} req/s; CPU {sub['cpu_ms']:.2f} "
            f"vs {thin['cpu_ms']:.2f} ms/req; bare session insert {bare['rps']:.0f} req/s, "
            f"{bare['cpu_ms']:.2f} ms/req) | >= {TARGET}x | {'yes' if ratio >= TARGET else 'no'} |"
        ])  # fmt: skip
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
