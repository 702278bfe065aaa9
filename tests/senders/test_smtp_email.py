"""SmtpEmailSender against FakeSMTP (aiosmtpd) through real aiosmtplib connections.

Dropped connections are made by a small TCP relay between the sender and the fake, which
can cut its connections the way a relay restart or a network failure would.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any, Self

import aiosmtplib
import pytest
from structlog.testing import capture_logs

from backinstock.config import SmtpSettings
from backinstock.senders.base import Outcome, OutgoingMessage, SendResult
from backinstock.senders.smtp_email import SmtpEmailSender, Stage, StageError, classify
from tests.fakes.smtp import FakeSMTP

FROM_ADDRESS = "shop@shop.example"
POOL = 4
# Against a relay that offers PIPELINING (MAIL, RCPT and DATA written together) and one that
# does not (each command waits for the reply to the one before).
BOTH_WAYS = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])


# ---------------------------------------------------------------------------- helpers
def _settings(port: int, **overrides: Any) -> SmtpSettings:
    # Every field is given, so no BACKINSTOCK_SMTP_* variable or .env file can leak in.
    values: dict[str, Any] = {
        "smtp_host": FakeSMTP.hostname,
        "smtp_port": port,
        "smtp_username": "",
        "smtp_password": "",
        "smtp_starttls": False,
        "smtp_from": f"Shop <{FROM_ADDRESS}>",
    }
    return SmtpSettings(**{**values, **overrides})


def _message(i: int, to: str | None = None, **fields: Any) -> OutgoingMessage:
    values: dict[str, Any] = {
        "subject": f"Back in stock #{i}",
        "html": f"<p>Item <b>{i}</b> is back</p>",
        "unsubscribe_url": f"https://shop.example/unsubscribe/{i}",
        **fields,
    }
    return OutgoingMessage(
        notification_id=uuid.uuid4(),
        channel="email",
        to=to or f"shopper{i}@example.com",
        to_masked="s***@example.com",
        text=f"Item {i} is back",
        **values,
    )


def _batch(n: int, start: int = 0) -> list[OutgoingMessage]:
    return [_message(i) for i in range(start, start + n)]


@contextlib.asynccontextmanager
async def _sender(settings: SmtpSettings, **kwargs: Any) -> AsyncIterator[SmtpEmailSender]:
    sender = SmtpEmailSender(settings, pool_size=POOL, **kwargs)
    try:
        yield sender
    finally:
        await sender.close()


def _outcomes(results: list[SendResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def _recipients(fake: FakeSMTP) -> list[str]:
    return [to for m in fake.messages for to in m.rcpt_tos]


class _Relay:
    """A plaintext TCP hop in front of FakeSMTP. ``cut_on``: cut the connection on which a
    client sends these bytes (not forwarded), once; ``cut_all``: cut every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_on: bytes | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, FakeSMTP.hostname, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def cut_all(self) -> None:
        for pair in list(self._pairs):
            _abort(pair)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(FakeSMTP.hostname, self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        pair = (client_w, up_w)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._forward(client_r, up_w, pair, watch=True),
                self._forward(up_r, client_w, pair, watch=False),
            )
        finally:
            self._pairs.discard(pair)
            _abort(pair)

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        watch: bool,
    ) -> None:
        tail = b""  # the pattern may straddle two reads
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if watch and self.cut_on is not None and self.cut_on in tail + data:
                    self.cut_on = None
                    _abort(pair)
                    return
                tail = data[-16:]
                writer.write(data)
                await writer.drain()
        writer.close()


def _abort(pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
    for writer in pair:
        writer.transport.abort()


# ----------------------------------------------------------------- message and pooling
@BOTH_WAYS
async def test_batch_arrives_with_both_parts_and_headers(pipelining: bool) -> None:
    messages = _batch(30)
    with FakeSMTP(pipelining=pipelining) as fake:
        async with _sender(_settings(fake.port)) as sender:
            results = await sender.send_batch(messages)
    assert [r.notification_id for r in results] == [m.notification_id for m in messages]
    assert set(_outcomes(results)) == {Outcome.SENT}
    assert sorted(_recipients(fake)) == sorted(m.to for m in messages)
    provider_ids = {r.provider_id for r in results}
    by_to = {m.rcpt_tos[0]: m for m in fake.messages}
    for message, result in zip(messages, results, strict=True):
        got = by_to[message.to]
        email = got.message
        assert got.mail_from == FROM_ADDRESS and not got.tls
        assert email["From"] == f"Shop <{FROM_ADDRESS}>" and email["To"] == message.to
        assert email["Subject"] == message.subject and email["Date"]
        assert email["Message-ID"] == result.provider_id
        assert str(result.provider_id).endswith("@shop.example>")
        assert email.get_content_type() == "multipart/alternative"
        plain, html = email.get_body(("plain",)), email.get_body(("html",))
        assert plain is not None and html is not None
        assert plain.get_content().strip() == message.text
        assert html.get_content().strip() == message.html
        assert email["List-Unsubscribe"] == f"<{message.unsubscribe_url}>"
        assert email["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(provider_ids) == 30


async def test_text_only_and_non_ascii_content() -> None:
    plain = _message(1, html=None, unsubscribe_url=None, subject="到货通知:\n蓝色马克杯")
    with FakeSMTP() as fake:
        async with _sender(_settings(fake.port)) as sender:
            [result] = await sender.send_batch([plain])
    assert result.outcome is Outcome.SENT
    [got] = fake.messages
    email = got.message
    assert email.get_content_type() == "text/plain"
    assert email["Subject"] == "到货通知: 蓝色马克杯"  # the line break is folded away
    assert "List-Unsubscribe" not in email and "List-Unsubscribe-Post" not in email
    assert got.raw.isascii()  # 7-bit on the wire: no relay needs 8BITMIME


@BOTH_WAYS
async def test_internationalized_address_goes_out_with_smtputf8(pipelining: bool) -> None:
    with FakeSMTP(pipelining=pipelining) as fake:
        async with _sender(_settings(fake.port)) as sender:
            [result] = await sender.send_batch([_message(1, to="顾客@例子.广告")])
    assert result.outcome is Outcome.SENT
    [got] = fake.messages
    assert got.rcpt_tos == ["顾客@例子.广告"] and got.message["To"] == "顾客@例子.广告"


@BOTH_WAYS
async def test_connections_are_reused_across_batches(pipelining: bool) -> None:
    with FakeSMTP(pipelining=pipelining) as fake:
        async with _sender(_settings(fake.port)) as sender:
            first = await sender.send_batch(_batch(30))
            second = await sender.send_batch(_batch(30, start=30))
            assert 1 <= fake.connection_count <= POOL
        assert set(_outcomes(first + second)) == {Outcome.SENT}
        assert len(fake.messages) == 60 and len(set(_recipients(fake))) == 60
    assert sender.channel == "email"


async def test_empty_batch_opens_nothing() -> None:
    with FakeSMTP() as fake:
        async with _sender(_settings(fake.port)) as sender:
            assert await sender.send_batch([]) == []
        assert fake.connection_count == 0


# ------------------------------------------------------------------------ TLS and AUTH
@BOTH_WAYS
async def test_auth_over_starttls(pipelining: bool) -> None:
    with FakeSMTP(
        starttls=True,
        require_starttls=True,
        username="mailer",
        password="s3cret",
        pipelining=pipelining,
    ) as fake:
        settings = _settings(
            fake.port, smtp_username="mailer", smtp_password="s3cret", smtp_starttls=True
        )
        async with _sender(settings, tls_context=fake.client_tls_context()) as sender:
            results = await sender.send_batch(_batch(10)) + await sender.send_batch(_batch(5))
        assert set(_outcomes(results)) == {Outcome.SENT}
        assert fake.connection_count <= POOL
    assert len(fake.messages) == 15
    assert all(m.tls and m.auth_login == "mailer" for m in fake.messages)


async def test_wrong_password_is_transient_and_tried_once_per_connection() -> None:
    with FakeSMTP(starttls=True, username="mailer", password="s3cret") as fake:
        settings = _settings(
            fake.port, smtp_username="mailer", smtp_password="wrong", smtp_starttls=True
        )
        async with _sender(settings, tls_context=fake.client_tls_context()) as sender:
            results = await sender.send_batch(_batch(30))
        # A misconfiguration must not burn contacts, nor hammer the relay with bad AUTHs.
        assert {(r.outcome, r.error) for r in results} == {(Outcome.TRANSIENT, "smtp:535")}
        assert fake.connection_count <= POOL
    assert fake.messages == []


async def test_starttls_required_but_not_offered_sends_nothing() -> None:
    with FakeSMTP(username="mailer", password="s3cret") as fake:
        settings = _settings(
            fake.port, smtp_username="mailer", smtp_password="s3cret", smtp_starttls=True
        )
        async with _sender(settings) as sender:
            results = await sender.send_batch(_batch(3))
    assert {(r.outcome, r.error) for r in results} == {(Outcome.TRANSIENT, "smtp:protocol")}
    assert fake.messages == []


async def test_implicit_tls_against_a_plaintext_server_fails_closed() -> None:
    with FakeSMTP() as fake:
        async with _sender(_settings(fake.port), use_tls=True) as sender:
            [result] = await sender.send_batch([_message(1)])
    assert result.outcome is Outcome.TRANSIENT and result.error in {"smtp:tls", "smtp:connection"}
    assert fake.messages == []


# ----------------------------------------------------------------------- classification
@BOTH_WAYS
async def test_refused_recipient_is_permanent_and_transient_data_error_is_not_resent(
    pipelining: bool,
) -> None:
    messages = [*_batch(20), _message(99, to="gone@example.com")]
    with FakeSMTP(
        rejected_recipients={"gone@example.com"}, transient_error_rate=0.3, pipelining=pipelining
    ) as fake:
        async with _sender(_settings(fake.port)) as sender:
            results = await sender.send_batch(messages)
        # The refusals were RSET away, so every connection stayed usable.
        assert fake.connection_count <= POOL
    by_to = {m.to: r for m, r in zip(messages, results, strict=True)}
    gone = by_to.pop("gone@example.com")
    assert (gone.outcome, gone.error, gone.provider_id) == (Outcome.PERMANENT, "smtp:550", None)
    transient = {to for to, r in by_to.items() if r.outcome is Outcome.TRANSIENT}
    sent = {to for to, r in by_to.items() if r.outcome is Outcome.SENT}
    assert {by_to[to].error for to in transient} == {"smtp:451"}
    assert len(transient) == fake.error_counts[451] >= 1 and sent
    # Exactly the SENT ones arrived, once each: a 451 is left to the dispatcher's retry.
    assert sorted(_recipients(fake)) == sorted(sent)
    assert fake.error_counts[550] == 1


_PERMANENT, _TRANSIENT = Outcome.PERMANENT, Outcome.TRANSIENT


@pytest.mark.parametrize(
    ("stage", "exc", "outcome", "error"),
    [
        (Stage.RCPT, aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "x"), _PERMANENT, 550),
        (Stage.RCPT, aiosmtplib.SMTPRecipientRefused(450, "4.2.0 busy", "x"), _TRANSIENT, 450),
        # Relaying denied / our IP blocked: a problem on our side, even at RCPT.
        (Stage.RCPT, aiosmtplib.SMTPRecipientRefused(554, "5.7.1 denied", "x"), _TRANSIENT, 554),
        (
            Stage.RCPT,
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(553, "5.1.3 bad address", "x")]
            ),
            _PERMANENT,
            553,
        ),
        (Stage.DATA, aiosmtplib.SMTPDataError(554, "5.6.0 content rejected"), _PERMANENT, 554),
        (Stage.DATA, aiosmtplib.SMTPDataError(451, "4.3.0 try later"), _TRANSIENT, 451),
        # Refusals of our own sender address or account are misconfigurations.
        (
            Stage.MAIL,
            aiosmtplib.SMTPSenderRefused(530, "5.7.0 auth required", "x"),
            _TRANSIENT,
            530,
        ),
        (Stage.MAIL, aiosmtplib.SMTPSenderRefused(550, "5.1.0 rejected", "x"), _TRANSIENT, 550),
        (
            Stage.CONNECT,
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad creds"),
            _TRANSIENT,
            535,
        ),
        (Stage.CONNECT, aiosmtplib.SMTPConnectResponseError(554, "no service"), _TRANSIENT, 554),
    ],
)
def test_reply_classification(stage: Stage, exc: Exception, outcome: Outcome, error: int) -> None:
    assert classify(StageError(stage, exc)) == (outcome, f"smtp:{error}")


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (aiosmtplib.SMTPReadTimeoutError("slow"), "smtp:timeout"),
        (aiosmtplib.SMTPConnectTimeoutError("slow"), "smtp:timeout"),
        (aiosmtplib.SMTPServerDisconnected("gone"), "smtp:connection"),
        (aiosmtplib.SMTPConnectError("refused"), "smtp:connection"),
        (aiosmtplib.SMTPException("STARTTLS not supported"), "smtp:protocol"),
        (RuntimeError("bug"), "smtp:unexpected"),
    ],
)
def test_connection_errors_are_transient(exc: Exception, error: str) -> None:
    assert classify(StageError(Stage.CONNECT, exc)) == (Outcome.TRANSIENT, error)


async def test_relay_down_is_transient_for_the_whole_batch() -> None:
    with FakeSMTP() as fake:
        port = fake.port
    async with _sender(_settings(port)) as sender:
        results = await sender.send_batch(_batch(10))
    assert {(r.outcome, r.error) for r in results} == {(Outcome.TRANSIENT, "smtp:connection")}


async def test_failures_never_mention_the_address() -> None:
    secret = "very.private.person@example.com"
    with FakeSMTP(rejected_recipients={secret}) as fake, capture_logs() as logs:
        async with _sender(_settings(fake.port)) as sender:
            [result] = await sender.send_batch([_message(1, to=secret)])
    assert result.outcome is Outcome.PERMANENT
    assert [log["event"] for log in logs] == ["smtp_send_failed"]
    assert "private" not in repr(result) and "private" not in repr(logs)


# ------------------------------------------------------------------ dropped connections
@BOTH_WAYS
async def test_relay_restart_between_batches_reconnects(pipelining: bool) -> None:
    with FakeSMTP(pipelining=pipelining) as before, FakeSMTP(pipelining=pipelining) as after:
        async with _Relay(before.port) as relay, _sender(_settings(relay.port)) as sender:
            first = await sender.send_batch(_batch(10))
            # The relay restarts: every pooled connection dies, the next ones land elsewhere.
            relay.upstream_port = after.port
            relay.cut_all()
            second = await sender.send_batch(_batch(10, start=10))
            third = await sender.send_batch(_batch(10, start=20))
        assert set(_outcomes(first + second + third)) == {Outcome.SENT}
        assert len(before.messages) == 10 and len(after.messages) == 20
        assert after.connection_count <= POOL
    assert len(set(_recipients(before) + _recipients(after))) == 30


@BOTH_WAYS
async def test_drop_before_data_is_retried_once_without_duplicates(pipelining: bool) -> None:
    with FakeSMTP(pipelining=pipelining) as fake:
        async with _Relay(fake.port) as relay, _sender(_settings(relay.port)) as sender:
            await sender.send_batch([_message(0)])  # an open, pooled connection
            relay.cut_on = b"MAIL FROM"
            [result] = await sender.send_batch([_message(1)])
            assert relay.cut_on is None  # the cut did happen
        assert result.outcome is Outcome.SENT
        assert _recipients(fake) == ["shopper0@example.com", "shopper1@example.com"]
        assert fake.connection_count == 2


@BOTH_WAYS
async def test_drop_during_data_is_transient_and_not_resent(pipelining: bool) -> None:
    with FakeSMTP(pipelining=pipelining) as fake:
        async with _Relay(fake.port) as relay, _sender(_settings(relay.port)) as sender:
            relay.cut_on = b"\r\n.\r\n"  # the end of the message data
            [lost] = await sender.send_batch([_message(1)])
            assert fake.messages == []
            [later] = await sender.send_batch([_message(2)])
    assert (lost.outcome, lost.error) == (Outcome.TRANSIENT, "smtp:connection")
    assert later.outcome is Outcome.SENT and _recipients(fake) == ["shopper2@example.com"]
