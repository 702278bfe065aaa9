"""The SMTP sender's own wire code (backinstock.senders.smtp_wire) against aiosmtplib.

Replies are parsed as aiosmtplib's protocol parses them and envelope addresses are written
as its quote_address writes them: both are checked against the library on generated input.
Pipelining is checked against scripted relays that hold their replies, or answer as a lax
relay does, on real loopback connections opened by aiosmtplib.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosmtplib
import pytest
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, SMTPProtocol, normalize_message_line_endings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backinstock.config import SmtpSettings
from backinstock.senders.base import Outcome, OutgoingMessage
from backinstock.senders.mime import render_email
from backinstock.senders.smtp_email import SmtpEmailSender
from backinstock.senders.smtp_wire import (
    _DOT_ATOM_MAILBOX,
    MAX_LINE_LENGTH,
    Wire,
    data_section,
    envelope_address,
    parse_replies,
)

HOST = "127.0.0.1"


# ------------------------------------------------------------------- replies, by fuzzing
def _library_replies(data: bytes) -> tuple[list[tuple[int, str]], bytes] | tuple[int, str]:
    """What aiosmtplib's protocol makes of ``data`` read in one piece: the replies and the
    bytes left over, or the (code, message) of the error it raises."""
    protocol = SMTPProtocol(loop=asyncio.new_event_loop())
    protocol._buffer = bytearray(data)
    replies: list[tuple[int, str]] = []
    try:
        while (reply := protocol._read_response_from_buffer()) is not None:
            replies.append(tuple(reply))  # type: ignore[arg-type]
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        protocol._loop.close()
    return replies, bytes(protocol._buffer)


def _our_replies(data: bytes) -> tuple[list[tuple[int, str]], bytes] | tuple[int, str]:
    buffer = bytearray(data)
    try:
        replies = [tuple(reply) for reply in parse_replies(buffer)]
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    return replies, bytes(buffer)  # type: ignore[return-value]


_codes = st.one_of(
    st.sampled_from([b"250", b"354", b"451", b"550", b"221", b"503"]),
    st.binary(min_size=0, max_size=4),  # short, not digits, "+25", " 25": int() decides
)
_texts = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b" ", b"\t ok \r", "é ü".encode(), b"\xff\xfe", b"-"]),
    st.integers(MAX_LINE_LENGTH - 8, MAX_LINE_LENGTH + 2).map(lambda n: b"x" * n),
)
_lines = st.tuples(
    _codes, st.sampled_from([b" ", b"-", b"", b"x"]), _texts, st.sampled_from([b"\r\n", b"\n"])
).map(b"".join)
_streams = st.tuples(st.lists(_lines, max_size=8).map(b"".join), st.binary(max_size=12)).map(
    b"".join
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams)
def test_replies_are_parsed_as_aiosmtplib_parses_them(data: bytes) -> None:
    assert _our_replies(data) == _library_replies(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_as_aiosmtplib_parses_them(data: bytes) -> None:
    assert _our_replies(data) == _library_replies(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_lines.filter(lambda line: line[:3].isdigit()), max_size=8).map(b"".join),
    st.lists(st.integers(0, 600), max_size=6),
)
def test_replies_split_across_reads_are_the_same_replies(data: bytes, cuts: list[int]) -> None:
    whole = _our_replies(data)
    buffer, replies, start = bytearray(), [], 0
    try:
        for end in [*sorted(c for c in cuts if c < len(data)), len(data)]:
            buffer += data[start:end]
            replies += [tuple(reply) for reply in parse_replies(buffer)]
            start = max(start, end)
    except aiosmtplib.SMTPResponseException as exc:
        assert whole == (exc.code, exc.message)
        return
    assert whole == (replies, bytes(buffer))


# --------------------------------------------------------- envelope addresses, by fuzzing
def _quoted(quote: Callable[[str], str], address: str) -> str:
    try:
        return quote(address)
    except ValueError:
        return "ValueError"


_address_characters = st.sampled_from(
    list("abcXYZ019!#$%&'*+/=?^_`{|}~-.@") + list(' <>"()[]\\,;:\t\r\n\x00\x7fé顾')
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.from_regex(_DOT_ATOM_MAILBOX, fullmatch=True),
        st.text(_address_characters, max_size=30),
        st.builds("{}@{}".format, st.text(_address_characters, max_size=8), st.text(max_size=8)),
    )
)
def test_envelope_addresses_are_written_as_aiosmtplib_writes_them(address: str) -> None:
    assert _quoted(envelope_address, address) == _quoted(quote_address, address)


# ------------------------------------------------------------------ a failed connection
class _ClosedTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


@pytest.mark.parametrize("hung_up", [True, False], ids=["eof-seen", "closing"])
async def test_a_write_on_a_failed_connection_is_reported_by_the_read_that_follows(
    hung_up: bool,
) -> None:
    """A relay may answer 354 and hang up before the body is written: the write must not
    raise (the sender classifies what a read reports), and the read must not wait."""
    transport = _ClosedTransport()
    wire = Wire(transport, pipelining=True, reply_timeout=60)
    if hung_up:
        wire.eof_received()
    wire.write(b"the body\r\n.\r\n")
    assert await wire.read(1) == []
    assert isinstance(wire.failure, aiosmtplib.SMTPServerDisconnected)
    assert transport.written == []


# ------------------------------------------------------------ message data, by fuzzing
def _library_data(message: bytes) -> bytes:
    """What aiosmtplib's execute_data_command writes after the 354."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


_data_pieces = st.sampled_from(
    [b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\n.\r", b"a", b"\x00"]
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=60), st.lists(_data_pieces, max_size=20).map(b"".join)))
def test_message_data_is_written_as_aiosmtplib_writes_it(message: bytes) -> None:
    assert data_section(message) == _library_data(message)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80), st.text(max_size=40))
def test_rendered_messages_are_written_as_aiosmtplib_writes_them(text: str, html: str) -> None:
    message = _message("shopper@example.com", text="." + text, html=html or None)
    try:
        data, _ = render_email(message, "Shop <shop@shop.example>", "shop.example")
    except ValueError:
        return  # refused before it reaches the wire
    assert data_section(data) == _library_data(data)


# ------------------------------------------------------- pipelining, on scripted relays
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]
EHLO_PIPELINING = b"250-relay\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 relay ESMTP\r\n")
    assert (await reader.readline()).startswith(b"EHLO")
    writer.write(EHLO_PIPELINING)


async def _body(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n.\r\n")


@contextlib.asynccontextmanager
async def _relay(script: Script) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A relay on loopback that runs ``script`` on each connection; ``seen`` collects what
    the script chooses to record."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await _greet(reader, writer)
            await script(reader, writer, seen)
        writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), seen
    finally:
        server.close()


def _sender(port: int, **kwargs: Any) -> SmtpEmailSender:
    settings = SmtpSettings(
        smtp_host=HOST,
        smtp_port=port,
        smtp_username="",
        smtp_password="",
        smtp_starttls=False,
        smtp_from="Shop <shop@shop.example>",
    )
    return SmtpEmailSender(settings, pool_size=1, **kwargs)


def _message(to: str, text: str = "Back in stock", html: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(uuid.uuid4(), "email", to, "s***@example.com", text=text, html=html)


async def _quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await reader.readline() == b"QUIT\r\n"
    writer.write(b"221 bye\r\n")


async def _three_commands(reader: asyncio.StreamReader) -> list[bytes]:
    return [await reader.readline() for _ in range(3)]


async def test_mail_rcpt_and_data_go_together_to_a_relay_that_pipelines() -> None:
    async def hold_replies(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        for _ in range(2):
            # Nothing is answered until all three commands are in: a client that waits for
            # MAIL's reply before writing RCPT would wait here until its timeout.
            seen += await _three_commands(reader)
            writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
            seen.append(await _body(reader))
            writer.write(b"250 queued\r\n")
        await _quit(reader, writer)

    async with _relay(hold_replies) as (port, seen):
        sender = _sender(port, timeout=5)
        results = await sender.send_batch([_message("a@example.com"), _message("b@example.com")])
        await sender.close()
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    commands = [line for line in seen if not line.endswith(b"\r\n.\r\n")]
    assert commands == [
        b"MAIL FROM:<shop@shop.example>\r\n",
        b"RCPT TO:<a@example.com>\r\n",
        b"DATA\r\n",
        b"MAIL FROM:<shop@shop.example>\r\n",
        b"RCPT TO:<b@example.com>\r\n",
        b"DATA\r\n",
    ]


async def test_a_lax_relay_accepting_data_after_refusing_the_recipient_gets_no_body() -> None:
    async def lax(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await _three_commands(reader)
        writer.write(b"250 ok\r\n550 5.1.1 <gone@example.com> unknown\r\n354 go ahead\r\n")
        seen.append(await reader.readline())  # RFC 2920: the client ends the message at once
        writer.write(b"554 no valid recipients\r\n")
        seen.append(await reader.readline())  # and clears the envelope
        writer.write(b"250 reset\r\n")
        await _accept_one(reader, writer, seen)

    async with _relay(lax) as (port, seen):
        sender = _sender(port, timeout=5)
        [gone] = await sender.send_batch([_message("gone@example.com")])
        [later] = await sender.send_batch([_message("here@example.com")])
        await sender.close()
    assert (gone.outcome, gone.error) == (Outcome.PERMANENT, "smtp:550")
    assert seen[:2] == [b".\r\n", b"RSET\r\n"]
    assert later.outcome is Outcome.SENT and b"To: here@example.com" in seen[2]


async def _accept_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """A pipelined message taken as a relay takes it, then QUIT."""
    await _three_commands(reader)
    writer.write(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
    seen.append(await _body(reader))
    writer.write(b"250 queued\r\n")
    await _quit(reader, writer)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "smtp:timeout"),  # the relay stops answering
        (b"hello there\r\n", "smtp:-1"),  # a reply that is not SMTP's
        # The relay says "go ahead" and hangs up: the body is written to a closed
        # connection, or not at all if the hang-up was seen first; either way no reply.
        (b"250 ok\r\n250 ok\r\n354 go ahead\r\n", "smtp:connection"),
    ],
    ids=["silent", "garbled", "gone-after-354"],
)
async def test_a_relay_that_fails_to_answer_fails_the_message_and_loses_the_connection(
    answer: bytes, error: str
) -> None:
    connections: list[int] = []

    async def failing_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        connections.append(1)
        if len(connections) > 1:
            await _accept_one(reader, writer, seen)
            return
        await _three_commands(reader)
        writer.write(answer)
        if answer.endswith(b"354 go ahead\r\n"):
            writer.transport.abort()
            return
        await reader.read()  # until the client gives up on this connection and closes it

    async with _relay(failing_once) as (port, seen):
        sender = _sender(port, timeout=0.2)
        [failed] = await sender.send_batch([_message("a@example.com")])
        sender._timeout = 5  # the next connection may take its time
        [later] = await sender.send_batch([_message("b@example.com")])
        await sender.close()
    assert (failed.outcome, failed.error) == (Outcome.TRANSIENT, error)
    assert later.outcome is Outcome.SENT and len(connections) == 2 and len(seen) == 1


@pytest.mark.parametrize(
    "hostile",
    ["a@example.com\r\nRCPT TO:<b@x.example>", "a\x00@example.com", "a\ud800@example.com"],
    ids=["crlf", "nul", "lone-surrogate"],
)
async def test_an_address_that_would_break_the_command_line_is_never_written(
    hostile: str,
) -> None:
    async def record(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        seen.append(await reader.read())

    async with _relay(record) as (port, seen):
        sender = _sender(port, timeout=5)
        [result] = await sender.send_batch([_message(hostile)])
        await sender.close()
    assert (result.outcome, result.error) == (Outcome.PERMANENT, "smtp:invalid-message")
    assert b"MAIL" not in b"".join(seen)
