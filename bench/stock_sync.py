"""A whole catalogue's stock levels through POST /v1/restocks/batch, on PostgreSQL + Redis.

One `backinstock serve` (uvicorn, 1 process) on a fresh database; SKUs with shoppers waiting
(``--waiting`` each, subscribed through the API). Each round sends two syncs of
``--skus`` × ``--locations`` levels, 1,000 per request, from ``--clients`` concurrent
clients: a restock (every SKU from 0 to 1-3 units per location: each SKU's wave opens) and
a sell-out (every level back to 0: each wave closes). ``--order location`` sends one
request per location with every SKU in it (a marketplace's sync: each SKU's wave moves in
every request); ``--order sku`` groups a SKU's locations in one request. Every answer must
be 202 per event, and the waves open after each sync are counted: exactly one per SKU
after the restock, none after the sell-out.

The baseline, in the same run: the same kind of events one per request through
POST /v1/restocks (``--single`` of them, from 32 concurrent clients), its rate extrapolated
to the sync's size.

    .venv/bin/python bench/stock_sync.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2
from benchlib import (
    BENCH,
    PG,
    RESULTS,
    cpu_seconds,
    free_port,
    fresh_database,
    source_state,
    write_results,
)

from backinstock.crypto import new_key_spec

OUT = BENCH / "out"
DATABASE = "backinstock_bench_sync"
REDIS_URL = "redis://127.0.0.1:6379/11"
PER_REQUEST = 1000
BACKINSTOCK = str(Path(sys.executable).parent / "backinstock")
HIGH_RATE = "100000000/minute"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def service_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env.update(
        BACKINSTOCK_DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
        BACKINSTOCK_REDIS_URL=REDIS_URL,
        BACKINSTOCK_ENCRYPTION_KEYS=new_key_spec("b1"),
        BACKINSTOCK_BLIND_INDEX_KEY=new_key_spec("b1"),
        BACKINSTOCK_TOKEN_KEY=new_key_spec("b1"),
        BACKINSTOCK_RATE_LIMIT_PER_IP=HIGH_RATE,
        BACKINSTOCK_RATE_LIMIT_PER_CONTACT=HIGH_RATE,
        BACKINSTOCK_LOG_LEVEL="WARNING",
    )
    return env


def cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([BACKINSTOCK, *argv], env=env, cwd=OUT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"backinstock {' '.join(argv)} failed:\n{done.stderr}")
    return done.stdout


def serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = OUT / "stock_sync.log"
    argv = [BACKINSTOCK, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=OUT, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("serve did not answer /healthz within 30 s")


def open_waves() -> int:
    with psycopg2.connect(dbname=DATABASE, **PG) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM waves WHERE status = 'open' AND sku LIKE 'SKU-%'")
        return int(cur.fetchone()[0])


def sku(n: int) -> str:
    return f"SKU-{n:05d}"


async def gather_limited(clients: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(clients)

    async def run(job: Any) -> Any:
        async with gate:
            return await job

    return await asyncio.gather(*(run(job) for job in jobs))


async def seed(base: str, key: str, skus: int, waiting: int) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

        async def one(n: int) -> None:
            body = {
                "sku": sku(n % skus),
                "channel": "email",
                "contact": f"shopper{n}@mailbox.example",
                "customer_id": f"c-{n}",
            }
            response = await client.post("/v1/subscriptions", json=body)
            if response.status_code != 201:
                sys.exit(f"subscribe: {response.status_code} {response.text}")

        await gather_limited(16, [one(n) for n in range(skus * waiting)])


def sync_requests(
    args: argparse.Namespace, label: str, zero: bool, at: float
) -> list[list[dict[str, Any]]]:
    occurred = (T0 + timedelta(seconds=at)).isoformat()
    levels = [
        {
            "event_id": f"{label}-{loc}-{s}",
            "sku": sku(s),
            "available": 0 if zero else 1 + (s + loc) % 3,
            "location": f"loc-{loc:03d}",
            "occurred_at": occurred,
        }
        for loc, s in (
            [(loc, s) for loc in range(args.locations) for s in range(args.skus)]
            if args.order == "location"
            else [(loc, s) for s in range(args.skus) for loc in range(args.locations)]
        )
    ]
    return [levels[i : i + PER_REQUEST] for i in range(0, len(levels), PER_REQUEST)]


async def post_sync(
    base: str, key: str, requests: list[list[dict[str, Any]]], clients: int
) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:

        async def one(levels: list[dict[str, Any]]) -> None:
            response = await client.post("/v1/restocks/batch", json={"levels": levels})
            body = response.json()
            if response.status_code != 200 or body["recorded"] != len(levels):
                sys.exit(f"sync: {response.status_code} {response.text[:2000]}")

        started = time.perf_counter()
        await gather_limited(clients, [one(levels) for levels in requests])
        return time.perf_counter() - started


async def post_singles(base: str, key: str, count: int, label: str) -> float:
    """``count`` events one per request, 32 at a time: SKUs above the sync's, so that each
    opens its own wave as the sync's first events do. Returns events per second."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:

        async def one(n: int) -> None:
            body = {
                "event_id": f"{label}-{n}",
                "sku": f"SINGLE-{label}-{n % 1000:04d}",
                "available": 1 + n % 3,
                "location": f"loc-{n // 1000:03d}",
            }
            response = await client.post("/v1/restocks", json=body)
            if response.status_code != 202:
                sys.exit(f"single: {response.status_code} {response.text}")

        started = time.perf_counter()
        await gather_limited(32, [one(n) for n in range(count)])
        return count / (time.perf_counter() - started)


async def measure(
    args: argparse.Namespace, base: str, keys: dict[str, str], pid: int
) -> dict[str, Any]:
    print(f"seeding {args.skus * args.waiting} shoppers on {args.skus} SKUs", flush=True)
    await seed(base, keys["subscribe"], args.skus, args.waiting)
    size = args.skus * args.locations
    figures: dict[str, list[float]] = {"restock": [], "sellout": [], "single": [], "cpu": []}
    for r in range(args.rounds):
        at = 3600.0 * (r + 1)
        cpu = cpu_seconds(pid)
        seconds = await post_sync(
            base, keys["inventory"], sync_requests(args, f"r{r}", False, at), args.clients
        )
        figures["cpu"].append(cpu_seconds(pid) - cpu)
        opened = open_waves()
        figures["restock"].append(seconds)
        closing = await post_sync(
            base, keys["inventory"], sync_requests(args, f"z{r}", True, at + 60), args.clients
        )
        left = open_waves()
        figures["sellout"].append(closing)
        rate = await post_singles(base, keys["inventory"], args.single, f"s{r}")
        figures["single"].append(size / rate)
        print(
            f"round {r + 1}: restock sync {seconds:.2f} s ({opened} waves open), "
            f"sell-out sync {closing:.2f} s ({left} open); singles {rate:.0f} events/s "
            f"→ {size / rate:.1f} s for {size}",
            flush=True,
        )
        if opened != args.skus or left != 0:
            sys.exit(f"wrong waves: {opened} open after the restock, {left} after the sell-out")
    return figures


def section(args: argparse.Namespace, pg: dict[str, str], figures: dict[str, Any]) -> str:
    size = args.skus * args.locations
    med = {name: statistics.median(values) for name, values in figures.items()}
    per_round = "\n".join(
        f"| {r + 1} | {figures['restock'][r]:.2f} | {figures['sellout'][r]:.2f} | "
        f"{figures['single'][r]:.1f} | {figures['cpu'][r]:.2f} |"
        for r in range(args.rounds)
    )
    command = (
        f".venv/bin/python bench/stock_sync.py --skus {args.skus} --locations {args.locations} "
        f"--waiting {args.waiting} --clients {args.clients} --order {args.order} "
        f"--single {args.single} --rounds {args.rounds} --write"
    )
    restock, sellout, single, cpu = (med[k] for k in ("restock", "sellout", "single", "cpu"))
    heading = f"Catalogue sync: {size:,} levels through POST /v1/restocks/batch"
    rows = [
        f"| restock sync ({size:,} levels; every SKU's wave opens) "
        f"| **{restock:.2f} s** ({size / restock:,.0f} levels/s) |",
        f"| sell-out sync ({size:,} levels; every wave closes) | {sellout:.2f} s |",
        f"| baseline: the same events one per request, 32 clients, extrapolated "
        f"| {single:.1f} s ({single / restock:.0f}× the sync) |",
        f"| API CPU for the restock sync | {cpu:.2f} s |",
    ]
    table = "\n".join(rows)
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    return f"""## {heading} ({args.order}-major)

{when}, source `{source_state()}`, PostgreSQL {pg["server_version"]}
(synchronous_commit {pg["synchronous_commit"]}), one API process, {args.clients} clients.

`{command}`

{args.skus:,} SKUs × {args.locations} locations, {PER_REQUEST:,} levels per request, with
{args.waiting} shoppers waiting on each SKU. Every event answered 202; after each restock sync
exactly {args.skus:,} waves were open, after each sell-out sync none.

| | median of {args.rounds} |
|---|---|
{table}

| round | restock sync, s | sell-out sync, s | singles for {size:,}, s | API CPU, s |
|---|---|---|---|---|
{per_round}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--locations", type=int, default=50)
    parser.add_argument("--waiting", type=int, default=5, help="shoppers per SKU")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--order", choices=("location", "sku"), default="location")
    parser.add_argument("--single", type=int, default=2000, help="baseline events per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    pg = fresh_database(DATABASE)
    env = service_env()
    cli(env, "migrate")
    keys = {
        scope: cli(env, "keys", "create", "--name", f"bench-{scope}", "--scope", scope).split()[-1]
        for scope in ("subscribe", "inventory")
    }
    proc, port = serve(env)
    try:
        figures = asyncio.run(measure(args, f"http://127.0.0.1:{port}", keys, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    text = section(args, pg, figures)
    print("\n" + text)
    if args.write:
        write_results(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
