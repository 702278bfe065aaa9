"""Making a claim's messages: the worker's CPU for ``dispatch.service.prepare`` against the
fan-out bench's bare loop making the same messages.

Once per run: a fresh database, N waiting SMS shoppers and their restock wave written as
`bench/writer.py` writes it (N pending messages). Then rounds, each of C claims of 200
taken from the queue's head as a drain takes them (`dispatch.service.claim`); for each
claim, alternately first:

- ``prepare``: what the worker does with a claim before any provider call: its messages,
  shoppers, products, names and fallbacks read, then each message decided and made
  (contact and name decrypted, three links signed, templates rendered);
- ``bare``: `bench/fanout.py`'s bare loop for the same ids: one asyncpg query
  (``BARE_READ``), then ``bare_message`` for each row (the same decrypting, signing and
  rendering, none of the deciding).

Reported: this process's CPU time (``time.process_time``: the client's work, not
PostgreSQL's) per message, medians of the claims of a round, and their ratio.

    .venv/bin/python bench/prepare.py --shoppers 30000 --rounds 5 --claims 20 --write
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
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from benchlib import source_state, write_results
from fanout import BARE_READ, DSN, bare_message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from writer import Round as WriterRound
from writer import one_round as write_wave

from backinstock import db
from backinstock.config import CryptoSettings, Settings
from backinstock.crypto import Keys, load_keys
from backinstock.dispatch import service

BY_IDS = BARE_READ.replace("WHERE n.id > $1", "WHERE n.id = ANY($1::uuid[])")
LEASE = timedelta(minutes=10)


@dataclass
class Round:
    index: int
    prepare_us: list[float] = field(default_factory=list)  # per message, one per claim
    bare_us: list[float] = field(default_factory=list)

    @property
    def prepare(self) -> float:
        return statistics.median(self.prepare_us)

    @property
    def bare(self) -> float:
        return statistics.median(self.bare_us)


async def cpu_per_message(work: Callable[[], Awaitable[int]]) -> float:
    started = time.process_time()
    made = await work()
    return (time.process_time() - started) / made * 1e6


async def one_claim(
    rnd: Round, sessions: async_sessionmaker[AsyncSession], conn: asyncpg.Connection,
    settings: Settings, keys: Keys, prepare_first: bool,
) -> None:  # fmt: skip
    now = datetime.now(UTC)
    base = settings.core.public_base_url.rstrip("/")
    async with db.transaction(sessions) as session:
        ids = await service.claim(session, None, LEASE, uuid.uuid4(), now)
        if not ids:
            sys.exit("ran out of pending messages: seed more shoppers (--shoppers)")

        async def prepared() -> int:
            return len(await service.prepare(session, settings, keys, ids, now))

        async def bare() -> int:
            return len(
                [bare_message(keys, base, row) for row in await conn.fetch(BY_IDS, ids, len(ids))]
            )

        if prepare_first:
            rnd.prepare_us.append(await cpu_per_message(prepared))
            rnd.bare_us.append(await cpu_per_message(bare))
        else:
            rnd.bare_us.append(await cpu_per_message(bare))
            rnd.prepare_us.append(await cpu_per_message(prepared))


async def run_rounds(args: argparse.Namespace) -> list[Round]:
    settings = Settings.from_env()
    keys = load_keys(CryptoSettings(), production=True)
    engine = db.create_engine(settings.core.database_url)
    sessions = db.sessionmaker(engine)
    conn = await asyncpg.connect(DSN)
    rounds = [Round(i + 1) for i in range(args.rounds)]
    try:
        for _ in range(args.warmup):  # the templates compiled, the statements prepared
            await one_claim(Round(0), sessions, conn, settings, keys, True)
        for rnd in rounds:
            for claim in range(args.claims):
                await one_claim(rnd, sessions, conn, settings, keys, claim % 2 == 0)
            print(f"round {rnd.index}: prepare {rnd.prepare:.1f} us/msg, bare {rnd.bare:.1f} "
                  f"us/msg ({rnd.prepare / rnd.bare:.2f}x)", flush=True)  # fmt: skip
    finally:
        await conn.close()
        await engine.dispose()
    return rounds


def report(args: argparse.Namespace, rounds: list[Round], pg: dict[str, str], src: str) -> str:
    prepare = statistics.median(r.prepare for r in rounds)
    bare = statistics.median(r.bare for r in rounds)
    rows = [
        f"| {r.index} | {r.prepare:.1f} | {r.bare:.1f} | {r.prepare / r.bare:.2f}x |"
        for r in rounds
    ]
    command = "bench/prepare.py " + shlex.join(sys.argv[1:])
    return "\n".join([
        f"## {datetime.now(UTC):%Y-%m-%d} — making a claim's messages (worker CPU)",
        "",
        f"- command: `{command}` ({datetime.now(UTC):%H:%M} UTC)",
        f"- source: {src}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PostgreSQL {pg.get('server_version', '?')}",
        f"- {args.shoppers} SMS shoppers, one wave; {args.rounds} rounds of {args.claims} "
        "claims of 200 (drains' claims), each prepared and made bare in alternating order; "
        "this process's CPU per message, the median of a round's claims",
        "",
        "| round | prepare µs / message | bare make µs / message | prepare / bare |",
        "|---:|---:|---:|---:|",
        *rows,
        "",
        f"Median: prepare **{prepare:.1f} µs** a message, bare **{bare:.1f} µs**: "
        f"**{prepare / bare:.2f}x**.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=30_000, help="pending messages seeded")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--claims", type=int, default=20, help="claims of 200 per round")
    parser.add_argument("--warmup", type=int, default=5, help="claims before the rounds")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    needed = (args.warmup + args.rounds * args.claims) * service.BATCH
    if needed > args.shoppers:
        parser.error(f"{needed} messages needed: --shoppers {needed} or more")
    src = source_state()
    pg = write_wave(WriterRound(1), args.shoppers)
    rounds = asyncio.run(run_rounds(args))
    text = report(args, rounds, pg, src)
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
