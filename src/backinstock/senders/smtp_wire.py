"""SMTP transactions on a connection aiosmtplib opened, pipelined where the relay allows.

aiosmtplib opens, secures and authenticates a connection (TCP or implicit TLS, the greeting,
EHLO, STARTTLS, AUTH), and that stays its job. For the messages themselves it awaits each
command's reply before writing the next: MAIL, RCPT, DATA and the body are four writes and
four round trips a message, and its protocol reads exactly one reply per command written
(replies that arrive together are dropped). A relay that offers PIPELINING (RFC 2920)
accepts MAIL, RCPT and DATA in one write and answers them together, so a message costs two
round trips: half the system calls and event-loop wake-ups on both sides. ``take_over``
moves an open connection's transport to a :class:`Wire`, which writes what it is given and
hands back replies as they complete, however they arrive.

Replies are parsed as aiosmtplib parses them (the same codes, texts and errors, which
``tests/senders/test_smtp_wire.py`` checks against the library's own parser on generated
input) and returned as its ``SMTPResponse``; failures are its exception types, so the
sender's classification is the same whichever way a message went.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

MAX_LINE_LENGTH = 8192  # aiosmtplib's limits: a longer line or reply is a broken relay
MAX_REPLY_LENGTH = MAX_LINE_LENGTH * 4
INVALID_RESPONSE = -1  # aiosmtplib's SMTPStatus.invalid_response
DEFAULT_TIMEOUT = 60.0  # a client made without one (aiosmtplib's own default)


# A mailbox of dot-atoms, as RFC 5322 writes most: aiosmtplib's quote_address (parseaddr,
# then its injection check) returns it unchanged between angle brackets, which
# tests/senders/test_smtp_wire.py checks on generated addresses. Anything else (quotes,
# comments, a display name, non-ASCII) goes to the library.
_DOT_ATOM_MAILBOX = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def envelope_address(address: str) -> str:
    """``<address>`` for MAIL FROM or RCPT TO, as aiosmtplib's quote_address writes it
    (ValueError for an address that would break the command line), without parsing the
    common case: parseaddr was a fifth of the client's CPU a message."""
    if _DOT_ATOM_MAILBOX.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def data_section(message: bytes) -> bytes:
    """What follows DATA's 354 for ``message``, as aiosmtplib writes it: lone CR and LF made
    CRLF, a CRLF at the end, a dot doubled at the start of a line, then the line with the
    single dot. Its two passes over the whole message (a regex each) were a tenth of a
    wave's worker CPU by SMTP; a message of CRLF lines only (render_email's, which
    check_wire_form holds it to) needs neither unless a line starts with a dot, and
    counting and finding are cheaper than substituting."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = normalize_message_line_endings(message)
    elif not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or b"\n." in message:
        message = PERIOD_REGEX.sub(b"..", message)
    return message + b".\r\n"


def parse_replies(buffer: bytearray) -> list[SMTPResponse]:
    """The complete replies at the start of ``buffer``, removed from it; a partial reply
    stays for the next read. Raises SMTPResponseException for a line that is too long or
    does not start with a code (aiosmtplib's rules: the code is the last line's, the texts
    of a multiline reply are joined by newlines)."""
    replies: list[SMTPResponse] = []
    start = offset = 0
    text = bytearray()
    while (newline := buffer.find(b"\n", offset)) >= 0:
        line = bytes(buffer[offset : newline + 1])
        if len(line) > MAX_LINE_LENGTH:
            raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            shown = line.decode("utf-8", errors="ignore")
            raise aiosmtplib.SMTPResponseException(
                INVALID_RESPONSE, f"Malformed SMTP response line: {shown}"
            ) from None
        offset = newline + 1
        if text:  # as aiosmtplib joins them: no newline before the first non-empty text
            text += b"\n"
        text += line[4:].strip(b" \t\r\n")
        if line[3:4] != b"-":
            replies.append(SMTPResponse(code, text.decode("utf-8", "surrogateescape")))
            start, text = offset, bytearray()
    del buffer[:start]
    if len(buffer) > MAX_REPLY_LENGTH:
        raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
    return replies


class Wire(asyncio.Protocol):
    """One SMTP connection after its setup: writes bytes, reads replies in order.

    A read that cannot be completed (the connection dropped, the relay sent something that
    is not a reply, or it did not answer in time) returns the replies that did arrive and
    leaves the reason in ``failure``; the connection is then of no further use."""

    def __init__(
        self, transport: asyncio.Transport, *, pipelining: bool, reply_timeout: float
    ) -> None:
        self.transport = transport
        self.pipelining = pipelining  # the relay offered PIPELINING in its EHLO reply
        self.reply_timeout = reply_timeout  # seconds for the replies a read waits for
        self.failure: Exception | None = None
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: deque[SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0

    @property
    def is_open(self) -> bool:
        return self.failure is None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        """Nothing is written on a connection that has failed: the read that follows
        returns no reply, and ``failure`` says why."""
        if self.is_open:
            self.transport.write(data)

    async def read(self, count: int) -> list[SMTPResponse]:
        """The next ``count`` replies, or fewer if the connection failed first."""
        if self.failure is None and self.transport.is_closing():
            self.failure = aiosmtplib.SMTPServerDisconnected("Connection lost")
        if len(self._replies) < count and self.failure is None:
            self._wanted = count
            self._waiter = waiter = self._loop.create_future()
            # One timer for the whole wait: cheaper than asyncio.wait_for's task per reply.
            timer = self._loop.call_later(self.reply_timeout, self._time_out)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return [self._replies.popleft() for _ in range(min(count, len(self._replies)))]

    def close(self) -> None:
        self.transport.close()

    # ---------------------------------------------------------------- asyncio's side
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._replies += parse_replies(self._buffer)
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
            return
        if self._waiter is not None and len(self._replies) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
        lost.__cause__ = exc
        self._fail(lost)

    def _time_out(self) -> None:
        self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    def _fail(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def take_over(client: aiosmtplib.SMTP) -> Wire:
    """The transport of ``client``, connected (and secured and authenticated, as it was
    configured), moved to a :class:`Wire`; ``client`` is not to be used afterwards."""
    if client.is_ehlo_or_helo_needed:  # no STARTTLS or AUTH asked the relay's extensions
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()  # a relay without ESMTP: no extensions, no pipelining
    transport = cast(asyncio.Transport | None, client.transport)
    if transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    pipelining = client.supports_extension("pipelining")
    wire = Wire(transport, pipelining=pipelining, reply_timeout=client.timeout or DEFAULT_TIMEOUT)
    transport.set_protocol(wire)
    return wire
