"""A lean SMTP sink for the benchmarks: the relay at the end of the real client path.

It speaks what aiosmtplib needs (EHLO with PIPELINING, 8BITMIME and SMTPUTF8; MAIL, RCPT,
DATA with the dot-terminated body; RSET, NOOP, QUIT), accepts every message, and counts
them per recipient. It does no more work per message than a relay must (find the end of
the body, answer), so that a fan-out's figure is the sender's, not the sink's; its own CPU
is reported beside it. The suite's aiosmtpd fake (tests/fakes/smtp.py) checks far more and
costs several times as much per message.

Whoever connects to ``--stats-port`` is sent the counts as one JSON line:
``messages``, ``distinct`` recipients, ``most`` messages to one recipient, ``repeats`` (a
recipient's second and later messages, by whether their Message-ID was the first's:
``same_id``, a resend that mail stores de-duplicate, or ``other_id``), ``first`` and ``last``
(wall-clock seconds when a message's body was complete).

    .venv/bin/python bench/smtp_sink.py --port 2525 --stats-port 2526
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any, cast

EHLO = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
END_OF_DATA = b"\r\n.\r\n"


class Tally:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients: Counter[bytes] = Counter()
        self.first_id: dict[bytes, bytes] = {}  # recipient -> Message-ID of its first message
        self.repeats = Counter[str]()  # second messages: "same_id" or "other_id"
        self.first: float | None = None
        self.last: float | None = None

    def record(self, recipients: list[bytes], message_id: bytes) -> None:
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.messages += 1
        for recipient in recipients:
            self.recipients[recipient] += 1
            seen = self.first_id.setdefault(recipient, message_id)
            if self.recipients[recipient] > 1:
                self.repeats["same_id" if seen == message_id else "other_id"] += 1

    def summary(self) -> dict[str, Any]:
        most = max(self.recipients.values(), default=0)
        return {
            "messages": self.messages,
            "distinct": len(self.recipients),
            "most": most,
            "repeats": dict(self.repeats),
            "first": self.first,
            "last": self.last,
        }


MESSAGE_ID = b"Message-ID: "


def _message_id(buffer: bytearray, end: int) -> bytes:
    """The Message-ID header's value in the body ``buffer[:end]`` (the sender writes it on a
    line of its own), read in place: the body is not copied."""
    if buffer.startswith(MESSAGE_ID):
        start = 0
    else:
        start = buffer.find(b"\r\n" + MESSAGE_ID, 0, end) + 2
        if start < 2:
            return b""
    value = start + len(MESSAGE_ID)
    line_end = buffer.find(b"\r\n", value, end)
    return bytes(buffer[value : end if line_end < 0 else line_end])


class Session(asyncio.Protocol):
    """One SMTP connection. Commands may arrive pipelined: every complete line is answered
    in order, and the answers go out together."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = bytearray()
        self.in_data = False
        self.recipients: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self._answer_one(replies):
            pass
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def _answer_one(self, replies: list[bytes]) -> bool:
        if self.in_data:
            return self._end_of_body(replies)
        end = self.buffer.find(b"\r\n")
        if end < 0:
            return False
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        replies.append(self._command(line))
        return True

    def _end_of_body(self, replies: list[bytes]) -> bool:
        if self.buffer.startswith(b".\r\n"):  # an empty body
            message_id = b""
            del self.buffer[:3]
        else:
            end = self.buffer.find(END_OF_DATA)
            if end < 0:
                return False
            message_id = _message_id(self.buffer, end)
            del self.buffer[: end + len(END_OF_DATA)]
        self.in_data = False
        self.tally.record(self.recipients, message_id)
        self.recipients = []
        replies.append(b"250 2.0.0 queued\r\n")
        return True

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO
        if verb == b"MAIL" or verb == b"RSET":
            self.recipients = []
            return b"250 2.1.0 ok\r\n"
        if verb == b"RCPT":
            self.recipients.append(line[line.find(b"<") + 1 : line.rfind(b">")])
            return b"250 2.1.5 ok\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"HELO" or verb == b"NOOP":
            return b"250 ok\r\n"
        if verb == b"QUIT":
            if self.transport is not None:
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
            return b""
        return b"502 5.5.2 not implemented\r\n"


async def serve(port: int, stats_port: int) -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: Session(tally), "127.0.0.1", port, backlog=512)

    async def tell(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(tally.summary()).encode() + b"\n")
        await writer.drain()
        writer.close()

    stats = await asyncio.start_server(tell, "127.0.0.1", stats_port)
    print("ready", flush=True)
    async with smtp, stats:
        await asyncio.Event().wait()  # until the process is stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # a faster loop for the sink, when installed (uvicorn brings it)
    except ImportError:
        asyncio.run(serve(args.port, args.stats_port))
    else:
        uvloop.run(serve(args.port, args.stats_port))


if __name__ == "__main__":
    main()
