"""What the benchmark scripts share: the PostgreSQL they measure on, a fresh database per
run, process CPU time, a free port, where the source stood, the results file, and
aiosmtplib's own client as the baseline for email."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import psycopg2

from backinstock.senders.base import OutgoingMessage
from backinstock.senders.mime import render_email

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
PG: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PG_SETTINGS = ("server_version", "synchronous_commit", "fsync", "shared_buffers")


def fresh_database(name: str, show: tuple[str, ...] = PG_SETTINGS) -> dict[str, str]:
    """Drop and create ``name``; returns the server settings named in ``show``."""
    conn = psycopg2.connect(dbname="postgres", **PG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
        info = {}
        for setting in show:
            cur.execute(f"SHOW {setting}")
            info[setting] = cur.fetchone()[0]
    conn.close()
    return info


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of a process (fields 14 and 15 of /proc/PID/stat), with
    ``children`` that of its children it has reaped too (fields 16 and 17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` different free ports (held open together, so that none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def source_state(paths: tuple[str, ...] = ("src",)) -> str:
    """The commit, and which files under ``paths`` differ from it (read-only git calls)."""
    git = ["git", "--no-optional-locks"]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run([*git, "status", "--porcelain", "--", *paths], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    changed = [p for p in dirty if p.startswith(tuple(f"{path}/" for path in paths))]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def write_results(text: str) -> None:
    """Append a new section; earlier sections (even with the same heading) are kept."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\n"
    RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


def set_summary_rows(prefix: str, rows: list[str]) -> None:
    """In the summary table at the top of the results file, replace the rows whose first
    cell starts with ``prefix`` by ``rows`` (at the table's end)."""
    lines = RESULTS.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    kept = [line for line in lines[start:end] if not line.startswith(f"| {prefix}")]
    RESULTS.write_text("\n".join([*lines[:start], *kept, *rows, *lines[end:]]))


@contextlib.asynccontextmanager
async def library_smtp(
    port: int, connections: int, from_header: str
) -> AsyncIterator[Callable[[OutgoingMessage], Awaitable[None]]]:
    """``send(message)`` with aiosmtplib's ``sendmail`` over ``connections`` connections to a
    relay on loopback, one message on each at a time: the library's client, the email
    baselines' (rendered by backinstock.senders.mime, as the sender renders). QUIT at the
    end."""
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
               for _ in range(connections)]  # fmt: skip
    idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for client in clients:
        await client.connect()
        idle.put_nowait(client)
    envelope_from = from_header.rpartition("<")[2].rstrip(">")
    domain = envelope_from.rpartition("@")[2]

    async def send(message: OutgoingMessage) -> None:
        data, _ = render_email(message, from_header, domain)
        client = await idle.get()
        try:
            await client.sendmail(envelope_from, [message.to], data)
        finally:
            idle.put_nowait(client)

    yield send
    await asyncio.gather(*(client.quit() for client in clients))
