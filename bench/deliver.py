"""A claim's cost to the worker, by its size: ``dispatch.service.deliver`` to the dev outbox
against the fan-out bench's bare loop doing the same messages' work.

Once per run: a fresh database, N waiting SMS shoppers and their restock wave written as
`bench/writer.py` writes it (N pending messages). Then C rounds, each one pair for each claim
size S (the sizes interleaved), in this one process, alternately first:

- ``deliver``: a wake-up's claim of S named messages, the worker's whole path for it
  (claim, read, make, seal and write to the dev outbox, record the results through a
  group commit), as a worker process runs it, without the broker;
- ``bare``: `bench/fanout.py`'s bare loop for the next S messages: one asyncpg query, each
  message made, sealed and inserted with one ``executemany``.

Reported: this process's CPU time (``time.process_time``: the client's work, not
PostgreSQL's) per message, medians of the pairs; and, from the sizes, what a claim costs
whatever its size (per message = a + F / S, least squares).

    .venv/bin/python bench/deliver.py --shoppers 20000 --claims 20 --sizes 50,100,200 --write
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import statistics
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import asyncpg
from benchlib import source_state, write_results
from fanout import BARE_INSERT, BARE_READ, DSN, bare_message, bare_outbox_rows
from prepare import cpu_per_message
from writer import Round as WriterRound
from writer import one_round as write_wave

from backinstock import db
from backinstock.config import CryptoSettings, Settings
from backinstock.crypto import Keys, load_keys
from backinstock.dispatch import service
from backinstock.dispatch.journal import GroupCommit
from backinstock.ops.logging import configure_logging
from backinstock.senders.registry import build_senders

BY_IDS = BARE_READ.replace("WHERE n.id > $1", "WHERE n.id = ANY($1::uuid[])")
WARMUP = 3  # pairs per size before the measured ones: templates compiled, statements prepared


@dataclass
class Size:
    claim: int
    deliver_us: list[float] = field(default_factory=list)  # per message, one per claim
    bare_us: list[float] = field(default_factory=list)

    @property
    def deliver(self) -> float:
        return statistics.median(self.deliver_us)

    @property
    def bare(self) -> float:
        return statistics.median(self.bare_us)


async def bare(conn: asyncpg.Connection, keys: Keys, base: str, ids: list[uuid.UUID]) -> int:
    """`bench/fanout.py`'s bare loop for these messages: read, make, seal, insert."""
    messages = [bare_message(keys, base, row) for row in await conn.fetch(BY_IDS, ids, len(ids))]
    rows = bare_outbox_rows(keys, messages)
    await conn.executemany(BARE_INSERT, rows)
    return len(rows)


async def run(args: argparse.Namespace) -> list[Size]:
    settings = Settings.from_env()
    configure_logging("WARNING", json=True, libraries=False)  # as the bench's workers run
    keys = load_keys(CryptoSettings(), production=True)
    engine = db.create_engine(settings.core.database_url)
    sessions = db.sessionmaker(engine)
    senders = build_senders(settings, sessions, keys, None)
    delivery = settings.delivery
    group_commit = GroupCommit(
        sessions, flush_after=delivery.record_after_seconds, flush_results=delivery.record_results
    )
    base = settings.core.public_base_url.rstrip("/")
    conn = await asyncpg.connect(DSN)
    pending = [r[0] for r in await conn.fetch("SELECT id FROM notifications ORDER BY id")]
    sizes = [Size(int(s)) for s in args.sizes.split(",")]
    try:
        # Sizes interleaved, pair by pair: the host's drift (and the settling after the
        # wave was written) falls on every size alike.
        for pair in range(WARMUP + args.claims):
            for size in sizes:
                claim, other = pending[: size.claim], pending[size.claim : 2 * size.claim]
                del pending[: 2 * size.claim]
                delivering = partial(
                    service.deliver,
                    *(sessions, settings, keys, senders, claim),
                    group_commit=group_commit,
                )
                making = partial(bare, conn, keys, base, other)
                if pair % 2:  # alternate which runs first
                    made = await cpu_per_message(making)
                    delivered = await cpu_per_message(delivering)
                else:
                    delivered = await cpu_per_message(delivering)
                    made = await cpu_per_message(making)
                if pair >= WARMUP:
                    size.deliver_us.append(delivered)
                    size.bare_us.append(made)
        for size in sizes:
            print(f"claims of {size.claim}: deliver {size.deliver:.1f} us/msg, bare "
                  f"{size.bare:.1f} us/msg", flush=True)  # fmt: skip
    finally:
        await conn.close()
        await engine.dispose()
    return sizes


def fixed_cost(sizes: list[Size]) -> tuple[float, float]:
    """(a, F) of per message = a + F / S, least squares over the sizes' medians."""
    xs = [1 / s.claim for s in sizes]
    ys = [s.deliver for s in sizes]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return mean_y - slope * mean_x, slope


def report(args: argparse.Namespace, sizes: list[Size], pg: dict[str, str], src: str) -> str:
    rows = [
        f"| {s.claim} | {s.deliver:.1f} | {s.bare:.1f} | {s.deliver / s.bare:.2f}x | "
        f"{min(s.deliver_us):.1f}-{max(s.deliver_us):.1f} |"
        for s in sizes
    ]
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d} — a claim's cost to the worker, by its size",
        "",
        f"- command: `bench/deliver.py {shlex.join(sys.argv[1:])}` ({datetime.now(UTC):%H:%M} UTC)",
        f"- source: {src}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, PostgreSQL {pg.get('server_version', '?')}",
        f"- {args.shoppers} SMS shoppers, one wave; {args.claims} rounds after {WARMUP} "
        "unmeasured, each a pair for every size (sizes interleaved): a wake-up's claim "
        "delivered to the dev outbox (claim, read, make, seal, write, results through a group "
        "commit) and the bare loop's work for as many other messages, alternately first; this "
        "process's CPU per message, medians",
        "",
        "| claim size | deliver µs / message | bare µs / message | deliver / bare "
        "| deliver, range |",
        "|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    if len(sizes) > 1:
        a, fixed = fixed_cost(sizes)
        lines += [
            f"Per message = a + F / size: a = **{a:.1f} µs**, F = **{fixed / 1000:.2f} ms** a "
            "claim whatever its size.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shoppers", type=int, default=20_000, help="pending messages seeded")
    parser.add_argument("--claims", type=int, default=20, help="measured pairs per size")
    parser.add_argument("--sizes", default="50,100,200", help="claim sizes, comma-separated")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if max(sizes) > service.BATCH:
        parser.error(f"a claim takes at most dispatch.BATCH ({service.BATCH}) messages")
    needed = sum(2 * s * (WARMUP + args.claims) for s in sizes)
    if needed > args.shoppers:
        parser.error(f"{needed} messages needed: --shoppers {needed} or more")
    src = source_state()
    pg = write_wave(WriterRound(1), args.shoppers)
    text = report(args, asyncio.run(run(args)), pg, src)
    print(text)
    if args.write:
        write_results(text)


if __name__ == "__main__":
    main()
