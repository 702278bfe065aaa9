"""Email through an SMTP relay: aiosmtplib opens the connections, smtp_wire sends on them.

A small pool of SMTP connections is kept open across batches: opening one costs a TCP and
TLS handshake plus AUTH, more than sending a message. Each connection serves one message
at a time; a batch is spread over the pool. aiosmtplib connects, secures and authenticates
a connection; its transport then goes to a :class:`~backinstock.senders.smtp_wire.Wire`,
which writes MAIL, RCPT and DATA together when the relay offers PIPELINING (two round trips
a message instead of aiosmtplib's four) and one by one when it does not.

Each transaction is reported to the dispatcher's journal as it starts and ends. SMTP has no
idempotency key: a message whose transaction was in flight when a worker died is resent with
the same Message-ID (derived from the notification), which mail stores de-duplicate on.
Within a send, a connection that drops before DATA is retried once on a fresh connection
(the relay cannot have the message yet); a drop during DATA is not retried, because the
relay may already have queued it.

Addresses and bodies stay out of results and logs, and so do the relay's reply texts,
which usually quote the recipient.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr

import aiosmtplib
import structlog
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX

from backinstock.config import SmtpSettings
from backinstock.senders.base import UNRECORDED, Journal, Outcome, OutgoingMessage, SendResult
from backinstock.senders.mime import needs_smtputf8, render_email
from backinstock.senders.smtp_wire import Wire, data_section, envelope_address, take_over

log = structlog.get_logger(__name__)

CRLF = b"\r\n"
DATA = b"DATA\r\n"
COMPLETED, START_INPUT = 250, 354
QUEUED = frozenset({COMPLETED})  # the body's reply

DEFAULT_TIMEOUT = 10.0  # per SMTP command; a batch must finish well within its claim lease

# Replies about our account, never about the shopper: 530 authentication required,
# 534 mechanism too weak, 535 bad credentials, 538 encryption required for AUTH.
_ACCOUNT_CODES = frozenset({530, 534, 535, 538})
# RFC 3463 class 5.7 (security or policy: relaying denied, sender not authorized, our IP
# blocklisted) is about us too, even when it comes as the reply to RCPT.
_POLICY_STATUS = re.compile(r"^\s*5\.7\.\d{1,3}\b")


class Stage(enum.Enum):
    CONNECT = "connect"  # connect, EHLO, STARTTLS, AUTH: about the relay and our account
    MAIL = "mail"  # MAIL FROM: about our sender address
    RCPT = "rcpt"  # RCPT TO: about the shopper's address
    DATA = "data"  # the message itself, past the point where a resend is safe


class StageError(Exception):
    """A failed SMTP step, with the stage it failed at (classification depends on it)."""

    def __init__(self, stage: Stage, cause: Exception) -> None:
        super().__init__(stage.value, type(cause).__name__)
        self.stage = stage
        self.cause = cause

    @property
    def retryable(self) -> bool:
        # Before DATA the relay holds at most a half-built envelope, so resending cannot
        # deliver twice; a drop during DATA may come after the relay queued the message.
        dropped = isinstance(self.cause, aiosmtplib.SMTPServerDisconnected)
        return dropped and self.stage is not Stage.DATA


# What each envelope command's reply must be, in the order they are sent (251 to RCPT:
# "not local, will forward"; 354 to DATA: send the body).
_ENVELOPE = (
    (Stage.MAIL, frozenset({COMPLETED})),
    (Stage.RCPT, frozenset({COMPLETED, 251})),
    (Stage.DATA, frozenset({START_INPUT})),
)


@dataclass(frozen=True)
class _Envelope:
    """A message as it goes on the wire: its three commands and its dot-stuffed body."""

    message: OutgoingMessage
    mail: bytes  # MAIL FROM:<...> [SMTPUTF8] CRLF
    rcpt: bytes  # RCPT TO:<...> CRLF
    body: bytes  # normalized, dot-stuffed and ended with CRLF . CRLF, as aiosmtplib sends it
    message_id: str


class _Connection:
    """A pooled connection: aiosmtplib opens it, its transactions run on a Wire."""

    def __init__(self, open_client: Callable[[], aiosmtplib.SMTP]) -> None:
        self._open_client = open_client
        self.wire: Wire | None = None

    @property
    def is_connected(self) -> bool:
        return self.wire is not None and self.wire.is_open

    async def open(self) -> Wire:
        if self.wire is None or not self.wire.is_open:
            self.close()
            client = self._open_client()
            try:
                await client.connect()
                self.wire = await take_over(client)
            except BaseException:
                client.close()
                raise
        return self.wire

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
            self.wire = None


@dataclass
class _Batch:
    # A failure to connect (relay down, wrong password, bad certificate) would hit every
    # message: the rest of the batch gets the same result instead of hammering the relay,
    # or locking the account with a burst of bad AUTH attempts.
    relay_failure: StageError | None = None


class SmtpEmailSender:
    channel = "email"
    marks_starts = True

    def __init__(
        self,
        settings: SmtpSettings,
        pool_size: int = 4,
        tls_context: ssl.SSLContext | None = None,
        use_tls: bool = False,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        envelope_from = parseaddr(settings.smtp_from)[1]
        if not settings.smtp_host or "@" not in envelope_from:
            raise ValueError("SMTP needs smtp_host and an smtp_from address")
        self._settings = settings
        self._pool_size = pool_size
        self._tls_context = tls_context
        self._use_tls = use_tls
        self._timeout = timeout
        self._envelope_from = envelope_from
        self._quoted_from = envelope_address(envelope_from)
        self._msgid_domain = envelope_from.rpartition("@")[2].encode("idna").decode("ascii")
        self._connections: list[_Connection] = []
        self._idle: asyncio.Queue[_Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]:
        if not messages:
            return []
        idle, batch = self._pool_for_running_loop(), _Batch()
        sends = (self._send(idle, batch, m, journal) for m in messages)
        return [r for r in await asyncio.gather(*sends) if r is not None]

    async def close(self) -> None:
        """QUIT the pooled connections; call once no batch is in flight."""
        connections, loop = self._connections, self._loop
        self._connections, self._idle, self._loop = [], None, None
        # Connections left on another loop cannot be used from this one; they are dropped.
        if loop is asyncio.get_running_loop():
            await asyncio.gather(*(self._quit(c) for c in connections if c.is_connected))
        for connection in connections:
            connection.close()

    def _pool_for_running_loop(self) -> asyncio.Queue[_Connection]:
        """One pool per event loop, built lazily: connections and the queue belong to the
        loop they were made on."""
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:
            self._connections = [_Connection(self._new_client) for _ in range(self._pool_size)]
            # Last in, first out: the warmest connection goes first, so a small batch
            # reuses one connection instead of opening a new one on every slot.
            self._idle = asyncio.LifoQueue()
            for connection in self._connections:
                self._idle.put_nowait(connection)
            self._loop = loop
        return self._idle

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password if s.smtp_username else None,
            use_tls=self._use_tls,
            # True, not None: a relay (or a man in the middle) that stops offering STARTTLS
            # must not get our password and the shoppers' addresses in plaintext.
            start_tls=s.smtp_starttls and not self._use_tls,
            tls_context=self._tls_context,
            timeout=self._timeout,
        )

    async def _send(
        self,
        idle: asyncio.Queue[_Connection],
        batch: _Batch,
        message: OutgoingMessage,
        journal: Journal,
    ) -> SendResult | None:
        try:
            envelope = self._envelope(message)
        except ValueError as exc:  # e.g. a line break in a header: the same on every retry
            return _failed(message, Outcome.PERMANENT, "smtp:invalid-message", exc)
        connection = await idle.get()  # in flight: at most one message per connection
        try:
            return await journal.call(message, lambda: self._send_on(connection, batch, envelope))
        finally:
            idle.put_nowait(connection)

    async def _send_on(
        self, connection: _Connection, batch: _Batch, envelope: _Envelope
    ) -> SendResult:
        message = envelope.message
        try:
            await self._deliver(connection, batch, envelope)
        except StageError as failure:
            if failure.stage is Stage.CONNECT:
                batch.relay_failure = failure
            return _failed(message, *classify(failure), failure)
        except asyncio.CancelledError:
            connection.close()  # stopped mid-transaction: the connection's state is unknown
            raise
        return SendResult(message.notification_id, Outcome.SENT, provider_id=envelope.message_id)

    def _envelope(self, message: OutgoingMessage) -> _Envelope:
        """Raises ValueError for a message that cannot be written safely: a header or an
        address that would break its line (aiosmtplib's own checks for the addresses)."""
        utf8 = needs_smtputf8(message.to, self._envelope_from)
        data, message_id = render_email(
            message, self._settings.smtp_from, self._msgid_domain, utf8=utf8
        )
        encoding = "utf-8" if utf8 else "ascii"
        mail = b"MAIL FROM:" + self._quoted_from.encode(encoding)
        rcpt = b"RCPT TO:" + envelope_address(message.to).encode(encoding)
        if COMMAND_INJECTION_REGEX.search(mail) or COMMAND_INJECTION_REGEX.search(rcpt):
            raise ValueError("a control character in an envelope address")
        body = data_section(data)
        options = b" SMTPUTF8" if utf8 else b""
        return _Envelope(message, mail + options + CRLF, rcpt + CRLF, body, message_id)

    async def _deliver(self, connection: _Connection, batch: _Batch, envelope: _Envelope) -> None:
        # Only a message that would need a new connection gets the batch's connect failure:
        # connections already open keep working (say the relay refused just one more).
        if batch.relay_failure is not None and not connection.is_connected:
            raise StageError(Stage.CONNECT, batch.relay_failure.cause)
        try:
            await self._transaction(connection, envelope)
        except StageError as failure:
            if not failure.retryable:
                raise
            # Typically a pooled connection the relay closed while idle (a restart, an
            # idle timeout) before we noticed: reconnect once.
            await self._transaction(connection, envelope)

    async def _transaction(self, connection: _Connection, envelope: _Envelope) -> None:
        try:
            wire = await connection.open()  # closes what it opened if it fails
        except Exception as exc:
            raise StageError(Stage.CONNECT, exc) from exc
        try:
            await self._envelope_accepted(wire, envelope)
            wire.write(envelope.body)
            _check(Stage.DATA, QUEUED, await wire.read(1), wire)
        except StageError as failure:
            await self._recover(connection, wire, failure)
            raise

    async def _envelope_accepted(self, wire: Wire, envelope: _Envelope) -> None:
        """MAIL, RCPT and DATA: in one write when the relay pipelines, else one by one,
        each reply checked in order; returns once DATA is answered 354 (send the body)."""
        commands = (envelope.mail, envelope.rcpt, DATA)
        if wire.pipelining:
            wire.write(b"".join(commands))
            replies = await wire.read(len(commands))
            try:
                for index, (stage, accepted) in enumerate(_ENVELOPE):
                    _check(stage, accepted, replies[index : index + 1], wire)
            except StageError:
                if len(replies) == 3 and replies[2].code == START_INPUT:
                    # RFC 2920: a relay that accepted DATA after refusing the envelope
                    # gets an empty message, which it must refuse for want of recipients.
                    wire.write(b".\r\n")
                    await wire.read(1)
                raise
            return
        for (stage, accepted), command in zip(_ENVELOPE, commands, strict=True):
            wire.write(command)
            _check(stage, accepted, await wire.read(1), wire)

    async def _recover(self, connection: _Connection, wire: Wire, failure: StageError) -> None:
        """Leave the connection ready for the next message, or closed (to be reopened).
        After a refusal the relay may still hold our envelope; a MAIL FROM on top of it
        would be answered 503, so clear it (RFC 5321 4.1.1.5)."""
        refused = isinstance(failure.cause, aiosmtplib.SMTPResponseException)
        if refused and wire.is_open:
            wire.write(b"RSET\r\n")
            reset = await wire.read(1)
            if reset and reset[0].code == COMPLETED:
                return
        connection.close()

    async def _quit(self, connection: _Connection) -> None:
        wire = connection.wire
        if wire is not None and wire.is_open:
            wire.write(b"QUIT\r\n")
            await wire.read(1)  # 221, or a relay already gone
        connection.close()


def classify(failure: StageError) -> tuple[Outcome, str]:
    """The outcome and the ``error`` for a failed send; never mentions the recipient."""
    exc = failure.cause
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]  # one recipient per message: its refusal is the answer
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify_reply(failure.stage, exc.code, exc.message), f"smtp:{exc.code}"
    if isinstance(exc, TimeoutError):  # aiosmtplib's timeouts subclass it
        return Outcome.TRANSIENT, "smtp:timeout"
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return Outcome.TRANSIENT, "smtp:tls"  # a certificate problem is ours to fix
    if isinstance(exc, OSError):  # refused, reset, dropped (SMTPServerDisconnected too)
        return Outcome.TRANSIENT, "smtp:connection"
    if isinstance(exc, aiosmtplib.SMTPException):  # e.g. STARTTLS required but not offered
        return Outcome.TRANSIENT, "smtp:protocol"
    # Anything else: retrying is bounded by the dispatcher's attempt limit; giving up would
    # drop a shopper for our own fault.
    return Outcome.TRANSIENT, "smtp:unexpected"


def _classify_reply(stage: Stage, code: int, text: str) -> Outcome:
    # Only a 5xx answer about the recipient or the message is final: failures before RCPT,
    # account codes and policy refusals mean a misconfiguration on our side, which must
    # not burn the contacts of every shopper in the wave.
    final = 500 <= code < 600 and stage in (Stage.RCPT, Stage.DATA)
    if final and code not in _ACCOUNT_CODES and not _POLICY_STATUS.match(text):
        return Outcome.PERMANENT
    return Outcome.TRANSIENT


def _check(stage: Stage, accepted: frozenset[int], replies: list[SMTPResponse], wire: Wire) -> None:
    """Raise StageError unless ``replies`` holds an ``accepted`` reply; no reply means the
    connection failed first (dropped, timed out, or not speaking SMTP). The errors are
    aiosmtplib's for the same replies, without the address (its replies may quote it)."""
    if not replies:
        lost = wire.failure or aiosmtplib.SMTPServerDisconnected("Connection lost")
        raise StageError(stage, lost)
    code, text = replies[0]
    if code in accepted:
        return
    if stage is Stage.MAIL:
        raise StageError(stage, aiosmtplib.SMTPSenderRefused(code, text, ""))
    if stage is Stage.RCPT:
        raise StageError(stage, aiosmtplib.SMTPRecipientRefused(code, text, ""))
    raise StageError(stage, aiosmtplib.SMTPDataError(code, text))


def _failed(message: OutgoingMessage, outcome: Outcome, error: str, exc: Exception) -> SendResult:
    # Only our own identifiers and the reply code: never the address, body or reply text.
    stage = exc.stage.value if isinstance(exc, StageError) else None
    cause = exc.cause if isinstance(exc, StageError) else exc
    log.warning(
        "smtp_send_failed",
        notification_id=str(message.notification_id),
        outcome=outcome.value,
        error=error,
        stage=stage,
        exc_type=type(cause).__name__,
    )
    return SendResult(message.notification_id, outcome, error=error)
