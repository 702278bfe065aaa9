"""The wave writer alone: how fast one worker writes a restock wave's rows when no sender
shares its event loop or the machine (PostgreSQL).

Per round: a fresh database, N waiting SMS shoppers seeded as `bench/fanout.py` seeds them,
the API started to take one `POST /v1/restocks` covering everyone (no worker runs, so
nothing is written or sent), the API stopped; then this process runs the wave's step the
way a worker's `waves.run` actor does (`flows.restock.run`, senders woken into a list) and
times it. The step's rows, chunk by chunk, are the writer's whole work; the fan-out bench
times the same writing while senders share the worker and the machine.

    .venv/bin/python bench/writer.py --size 100000 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from benchlib import cpu_seconds, free_port, fresh_database, source_state, write_results
from fanout import (
    BACKINSTOCK,
    DATABASE,
    cli,
    flush_redis,
    post_restock,
    postgres_cpu,
    postgres_cpu_since,
    seed,
    service_env,
    spawn,
    stop,
    wait_api,
)
from sqlalchemy import func, select

from backinstock import db
from backinstock.config import CryptoSettings, Settings
from backinstock.contacts import Channel
from backinstock.crypto import load_keys
from backinstock.dispatch.models import Notification
from backinstock.flows import restock
from backinstock.restocks.models import Wave


@dataclass
class Round:
    index: int
    seconds: float = 0.0
    rows: int = 0
    chunks: int = 0
    own_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


async def write_wave(rnd: Round) -> None:
    settings = Settings.from_env()
    engine = db.create_engine(settings.core.database_url)
    sessions = db.sessionmaker(engine)
    try:
        async with sessions() as session:
            wave_id: uuid.UUID | None = await session.scalar(select(Wave.id))
        assert wave_id is not None, "the restock opened no wave"
        woken: list[int] = []
        pg0, cpu0 = postgres_cpu(), cpu_seconds(os.getpid())
        started = time.perf_counter()
        rnd.rows = await restock.run(sessions, settings, wave_id, lambda ids: woken.append(1))
        rnd.seconds = time.perf_counter() - started
        rnd.own_cpu_s = cpu_seconds(os.getpid()) - cpu0
        rnd.pg_cpu_s = postgres_cpu_since(pg0)
        rnd.chunks = len(woken)
        async with sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Notification)) == rnd.rows
    finally:
        await engine.dispose()


def one_round(rnd: Round, size: int) -> dict[str, str]:
    pg = fresh_database(DATABASE)
    env = service_env(None)
    os.environ.update(env)
    keys = load_keys(CryptoSettings(), production=True)
    cli(env, "migrate")
    key = cli(env, "keys", "create", "--name", "bench", "--scope", "inventory").strip()
    flush_redis()
    asyncio.run(seed(keys, size, Channel.SMS))
    port = free_port()
    api = spawn("writer-api", [BACKINSTOCK, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env)  # fmt: skip
    try:
        wait_api(api, port)
        post_restock(port, key.splitlines()[-1], size, f"w-{rnd.index}")
    finally:
        stop(api)
    asyncio.run(write_wave(rnd))
    if rnd.rows != size:
        sys.exit(f"round {rnd.index}: {rnd.rows} rows written, {size} expected")
    return pg


def report(args: argparse.Namespace, rounds: list[Round], pg: dict[str, str], src: str) -> str:
    now = datetime.now(UTC)
    med = statistics.median
    lines = [
        f"## {now:%Y-%m-%d} — the wave writer alone (PostgreSQL)",
        "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/writer.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; source: {src}",
        f"- PostgreSQL {pg['server_version']} (synchronous_commit={pg['synchronous_commit']}); "
        f"{args.size} waiting SMS shoppers on one SKU, one restock covering them; the step "
        "written by `flows.restock.run` in this process, nothing else running",
        "",
        "| round | rows | chunks (wake-ups) | seconds | rows/s | writer CPU s | PG CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.index} | {r.rows} | {r.chunks} | {r.seconds:.2f} | {r.rate:.0f} "
            f"| {r.own_cpu_s:.2f} | {r.pg_cpu_s:.2f} |"
            for r in rounds
        ),
        f"| median | | | **{med(r.seconds for r in rounds):.2f}** "
        f"| **{med(r.rate for r in rounds):.0f}** | {med(r.own_cpu_s for r in rounds):.2f} "
        f"| {med(r.pg_cpu_s for r in rounds):.2f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="waiting shoppers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    rounds, pg, src = [], {}, source_state()
    for i in range(1, args.rounds + 1):
        rnd = Round(i)
        pg = one_round(rnd, args.size)
        rounds.append(rnd)
        print(f"round {i}: {rnd.rows} rows in {rnd.seconds:.2f} s ({rnd.rate:.0f}/s), "
              f"{rnd.chunks} chunks, PG CPU {rnd.pg_cpu_s:.1f} s", flush=True)  # fmt: skip
    text = report(args, rounds, pg, src)
    print("\n" + text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
