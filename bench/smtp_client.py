"""The SMTP client alone: the sender's pipelined transactions against aiosmtplib's sendmail.

Both send the same messages, rendered by backinstock.senders.mime, to bench/smtp_sink.py
(a process of its own, which offers PIPELINING as the relays a shop sends through do),
over the same number of connections, from one process with no database and no broker:

- ``sender``: SmtpEmailSender.send_batch, batches of 200 (a claim's), no journal. aiosmtplib
  opens each connection; MAIL, RCPT and DATA go in one write (backinstock.senders.smtp_wire).
- ``library``: aiosmtplib's ``sendmail`` per message, as the sender sent before and as
  ``bench/fanout.py --sink smtp``'s bare loop still does: four writes and four round trips.

Rounds alternate which goes first. Reported per round and as medians: messages a second
(wall clock) and the client's own CPU per message (``time.process_time``); the sink's CPU
is left out (it is the same code for both, answering the same commands).

    .venv/bin/python bench/smtp_client.py --messages 50000 --rounds 5 --write
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import free_port, library_smtp, write_results

from backinstock.config import SmtpSettings
from backinstock.senders.base import OutgoingMessage
from backinstock.senders.smtp_email import SmtpEmailSender

BENCH = Path(__file__).resolve().parent
FROM = "Shop <shop@shop.example>"
BATCH = 200
CONNECTIONS = 4  # the sender's default pool (smtp_connections)


def messages(n: int) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            notification_id=uuid.uuid4(),
            channel="email",
            to=f"shopper{i}@example.com",
            to_masked="s***@example.com",
            text=f"Blue Mug is back in stock. Buy it: https://shop.example/p/mug?n={i}",
            subject="Blue Mug is back",
            html=f'<p>Blue Mug is back. <a href="https://shop.example/p/mug?n={i}">Buy</a></p>',
            unsubscribe_url=f"https://shop.example/unsubscribe/{i}",
        )
        for i in range(n)
    ]


async def by_sender(port: int, batch: list[OutgoingMessage]) -> None:
    settings = SmtpSettings(
        smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False, smtp_from=FROM
    )
    sender = SmtpEmailSender(settings, pool_size=CONNECTIONS)
    for start in range(0, len(batch), BATCH):
        await sender.send_batch(batch[start : start + BATCH])
    await sender.close()


async def by_library(port: int, batch: list[OutgoingMessage]) -> None:
    async with library_smtp(port, CONNECTIONS, FROM) as send:
        for start in range(0, len(batch), BATCH):
            await asyncio.gather(*(send(m) for m in batch[start : start + BATCH]))


CLIENTS: dict[str, Callable[[int, list[OutgoingMessage]], Coroutine[Any, Any, None]]] = {
    "sender": by_sender,
    "library": by_library,
}


def one_round(name: str, n: int) -> dict[str, float]:
    port, stats = free_port(), free_port()
    sink = subprocess.Popen(
        [sys.executable, str(BENCH / "smtp_sink.py"), "--port", str(port), "--stats-port",
         str(stats)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        batch = messages(n)
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(CLIENTS[name](port, batch))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with socket.create_connection(("127.0.0.1", stats)) as conn:
            told = conn.makefile().readline()
        assert f'"messages": {n},' in told and f'"distinct": {n},' in told, told
    finally:
        sink.terminate()
        sink.wait()
    return {"per_s": n / wall, "cpu_us": 1e6 * cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    names = list(CLIENTS)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(got := one_round(name, args.messages))
            print(f"round {r + 1} {name:>7}: {got['per_s']:,.0f} msgs/s, "
                  f"{got['cpu_us']:.0f} µs CPU/msg", flush=True)  # fmt: skip
    lines = ["| client | round | messages / s | client CPU µs / message |", "|---|---:|---:|---:|"]
    for name, rounds in runs.items():
        lines += [f"| {name} | {r} | {g['per_s']:,.0f} | {g['cpu_us']:.0f} |"
                  for r, g in enumerate(rounds, 1)]  # fmt: skip
    med = {n: {k: statistics.median(g[k] for g in rs) for k in rs[0]} for n, rs in runs.items()}
    lines += [f"| {name} | median | **{g['per_s']:,.0f}** | **{g['cpu_us']:.0f}** |"
              for name, g in med.items()]  # fmt: skip
    summary = (
        f"sender / library: {med['sender']['per_s'] / med['library']['per_s']:.2f}x the "
        f"messages a second, {med['sender']['cpu_us'] / med['library']['cpu_us']:.2f}x the CPU "
        "a message"
    )
    print("\n".join(lines) + "\n" + summary)
    if args.write:
        now = datetime.now(UTC)
        write_results("\n".join([
            f"## {now:%Y-%m-%d} — the SMTP client alone: the sender (pipelined) against "
            "aiosmtplib's sendmail", "",
            f"- command: `.venv/bin/python bench/smtp_client.py --messages {args.messages} "
            f"--rounds {args.rounds} --write`",
            f"- date: {now:%Y-%m-%d %H:%M} UTC; one process, {CONNECTIONS} connections to "
            f"bench/smtp_sink.py (its own process), batches of {BATCH}; rounds alternate; "
            "every round's sink counted every message, each recipient once",
            "", *lines, "", summary, "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
