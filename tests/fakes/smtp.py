"""Fake SMTP relay on 127.0.0.1 built on aiosmtpd's threaded ``Controller``.

Point ``aiosmtplib`` at ``fake.hostname`` / ``fake.port``. With
``starttls=True`` the server offers STARTTLS using a self-signed certificate
generated at start-up (``cryptography``); aiosmtplib upgrades automatically
when STARTTLS is advertised, so pass ``tls_context=fake.client_tls_context()``
(trusts exactly that certificate) or ``validate_certs=False``.

With ``username``/``password`` set, AUTH (LOGIN or PLAIN) is required before
MAIL (``530`` otherwise; wrong credentials get ``535``). Failure injection:
``rejected_recipients`` get ``550`` at RCPT (the client
raises ``SMTPRecipientsRefused`` when every recipient is refused) and a seeded
``transient_error_rate`` answers DATA with ``451`` (``SMTPDataError``, a
``SMTPResponseException`` with ``code == 451``); neither is recorded.

It offers PIPELINING (RFC 2920) in its EHLO reply, as the relays a shop sends through do;
``pipelining=False`` leaves it out. aiosmtpd reads commands one line at a time either way,
so commands written together are answered in order.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import random
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedEmail:
    """One accepted message with its envelope; ``received_at`` is ``time.monotonic()``."""

    mail_from: str
    rcpt_tos: list[str]
    auth_login: str | None
    tls: bool
    received_at: float
    raw: bytes = field(repr=False)

    @cached_property
    def message(self) -> EmailMessage:
        # Parsed on first access, in the reader's thread: parsing in the server thread cost
        # more CPU per message than the SMTP exchange, and throughput benchmarks never read it.
        parsed = BytesParser(policy=policy.default).parsebytes(self.raw)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _LoopbackController(Controller):
    """Controller that binds port 0 and reports the port the kernel chose.

    Stock aiosmtpd connects to ``self.port`` right after binding to trigger its
    lazy factory; with port 0 that would fail, so we learn the port first.
    """

    def __init__(self, handler: Any, on_connect: Any, **smtp_kwargs: Any) -> None:
        super().__init__(handler, hostname=_HOST, port=0, **smtp_kwargs)
        self._on_connect = on_connect

    def _create_server(self) -> Any:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(self._factory_invoker, host=_HOST, port=0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def factory(self) -> SMTP:
        # asyncio builds one protocol (SMTP instance) per TCP connection.
        self._on_connect()
        return SMTP(self.handler, **self.SMTP_kwargs)


class FakeSMTP:
    """SMTP sink recording messages and connections; mutate injection attrs any time."""

    hostname = _HOST

    def __init__(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        rejected_recipients: Iterable[str] = (),
        transient_error_rate: float = 0.0,
        starttls: bool = False,
        require_starttls: bool = False,
        accept_delay: float = 0.0,
        pipelining: bool = True,
        seed: int = 0,
    ) -> None:
        self.pipelining = pipelining
        # Seconds between queueing a message and answering DATA: a client killed meanwhile
        # never learns the relay has it.
        self.accept_delay = accept_delay
        self.username, self.password = username, password
        self.rejected_recipients = {r.lower() for r in rejected_recipients}
        self.transient_error_rate = transient_error_rate
        self.starttls, self.require_starttls = starttls, require_starttls
        self.connection_count = 0
        self.error_counts: Counter[int] = Counter()  # SMTP reply code -> count
        self.cert_pem: bytes | None = None
        self._rng = random.Random(seed)  # seeded so failure patterns are reproducible
        self._lock = threading.Lock()  # the server thread writes, the test thread reads
        self._messages: list[ReceivedEmail] = []
        self._controller: _LoopbackController | None = None

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("server is not running; call start() first")
        return int(self._controller.port)

    @property
    def messages(self) -> list[ReceivedEmail]:
        with self._lock:
            return list(self._messages)

    def client_tls_context(self) -> ssl.SSLContext:
        """Client context trusting only this server's self-signed certificate."""
        if self.cert_pem is None:
            raise RuntimeError("start the server with starttls=True first")
        return ssl.create_default_context(cadata=self.cert_pem.decode())

    def start(self) -> Self:
        if self._controller is not None:
            raise RuntimeError("server already started")
        self._controller = _LoopbackController(self, self._count_connection, **self._smtp_kwargs())
        self._controller.start()
        # start() opened one probe connection to trigger aiosmtpd's lazy
        # factory; it is not a client connection, so do not count it.
        with self._lock:
            self.connection_count = 0
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _smtp_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"server_hostname": "fake-smtp.local"}
        if self.username is not None:
            # Plain loopback must allow AUTH without TLS; with STARTTLS offered,
            # demand it first like real relays. AUTH is enforced in handle_MAIL, not
            # auth_required=True, which makes aiosmtpd warn on every connection.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.starttls)
        if self.starttls:
            context, self.cert_pem = _self_signed_context()
            kwargs.update(tls_context=context, require_starttls=self.require_starttls)
        return kwargs

    def _count_connection(self) -> None:
        with self._lock:
            self.connection_count += 1

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.password is not None
            and hmac.compare_digest(data.login, (self.username or "").encode())
            and hmac.compare_digest(data.password, self.password.encode())
        )
        # handled=False lets aiosmtpd send the standard 535 reply on failure.
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # a handler that defines handle_EHLO must set it
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")  # before the last line, "250 HELP"
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.username is not None and not session.authenticated:
            return self._reply(530, "5.7.0 Authentication required")
        # A handler that defines handle_MAIL must fill in the envelope itself.
        envelope.mail_from, envelope.mail_options = address, list(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower() in self.rejected_recipients:
            return self._reply(550, f"5.1.1 <{address}>: Recipient address rejected: User unknown")
        # A handler that defines handle_RCPT must record accepted recipients itself.
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._rng.random() < self.transient_error_rate:
            return self._reply(451, "4.3.0 Temporary failure, please try again later")
        raw = envelope.original_content or b""
        login = session.auth_data.login.decode() if session.auth_data else None
        with self._lock:
            self._messages.append(
                ReceivedEmail(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    auth_login=login,
                    tls=session.ssl is not None,
                    received_at=time.monotonic(),
                    raw=raw,
                )
            )
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        return "250 2.0.0 OK: queued"

    def _reply(self, code: int, text: str) -> str:
        with self._lock:
            self.error_counts[code] += 1
        return f"{code} {text}"


def _self_signed_context() -> tuple[ssl.SSLContext, bytes]:
    """Server context with a fresh EC key and a 1-day cert for 127.0.0.1/localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-smtp.local")])
    now = datetime.now(UTC)
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(_HOST)), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain only reads files; keep them just long enough to load.
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context, cert_pem
