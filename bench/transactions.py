"""What a transaction of the wave's path costs the worker's process, by how it is opened.

A claim, the dev outbox's write and the group commit of results are each a transaction
whose statements are all driver statements (``db.DriverStatement``). Opened as an ORM
session (``db.transaction``) or on a pooled connection with a session that joins only if
used (``db.hot_transaction``), or the statement sent alone (``alone=True``: no BEGIN and
COMMIT round trips). Each variant runs the same one-row statement in a loop, in
alternating rounds, from one process against PostgreSQL; reported: the process's CPU a
transaction (``time.process_time``), the medians of the rounds.

    .venv/bin/python bench/transactions.py --transactions 2000 --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from benchlib import PG, write_results
from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock import db

STATEMENT = db.DriverStatement(select(literal(1).label("one")))
URL = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/postgres"

Sessions = async_sessionmaker[AsyncSession]


async def _session(sessions: Sessions) -> None:
    async with db.transaction(sessions) as session:
        await STATEMENT.all(session, {})


async def _hot(sessions: Sessions) -> None:
    async with db.hot_transaction(sessions) as session:
        await STATEMENT.all(session, {})


async def _hot_alone(sessions: Sessions) -> None:
    async with db.hot_transaction(sessions) as session:
        await STATEMENT.first(session, {}, alone=True)


VARIANTS: dict[str, Callable[[Sessions], Awaitable[None]]] = {
    "ORM session (db.transaction)": _session,
    "pooled connection (db.hot_transaction)": _hot,
    "pooled connection, the statement alone": _hot_alone,
}


async def _round(
    sessions: Sessions, variant: Callable[[Sessions], Awaitable[None]], n: int
) -> float:
    started = time.process_time()
    for _ in range(n):
        await variant(sessions)
    return (time.process_time() - started) / n * 1e6


async def measure(transactions: int, rounds: int) -> dict[str, list[float]]:
    engine = db.create_engine(URL, pool_size=2)
    sessions = db.sessionmaker(engine)
    try:
        for variant in VARIANTS.values():  # warm: connections, statement caches
            await _round(sessions, variant, 200)
        spent: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name, variant in VARIANTS.items():
                spent[name].append(await _round(sessions, variant, transactions))
        return spent
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=2000, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    spent = asyncio.run(measure(args.transactions, args.rounds))
    baseline = statistics.median(next(iter(spent.values())))
    lines = [
        "| opened as | CPU µs / transaction (median) | rounds | x the ORM session's |",
        "|---|---:|---|---:|",
    ]
    for name, values in spent.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        lines.append(f"| {name} | {median:.0f} | {rounds} | {median / baseline:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = (
            f"`.venv/bin/python bench/transactions.py --transactions {args.transactions} "
            f"--rounds {args.rounds}`"
        )
        write_results(
            f"## {now[:10]} — a transaction of the wave's path, by how it is opened\n\n"
            f"- command: {command}, {now[11:]}\n"
            "- one process, one pooled connection, a one-row `SELECT` as a driver statement; "
            "the process's CPU a transaction, variants alternating within each round\n\n"
            f"{table}\n"
        )


if __name__ == "__main__":
    main()
