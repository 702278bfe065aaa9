"""Fake Twilio Programmable Messaging API (``POST .../Messages.json``) on loopback.

Pointing the official SDK (twilio 9.x) at the fake
--------------------------------------------------
Every REST call goes ``client.api`` (``twilio.rest.api.Api``, a
``twilio.base.domain.Domain``) -> ``Domain.absolute_url(uri)`` which joins
``self.base_url`` ("https://api.twilio.com") with "/2010-04-01/Accounts/...".
``base_url`` is a plain attribute read on every request, so::

    client = Client(fake.account_sid, fake.auth_token, http_client=...)
    client.region = client.edge = None      # see below
    client.api.base_url = fake.base_url     # "http://127.0.0.1:<port>"

``ClientBase.get_hostname`` rewrites the host when ``region``/``edge`` is set
(also taken from TWILIO_REGION / TWILIO_EDGE env vars), which would mangle
"127.0.0.1:port"; hence clearing them. ``twilio_client_for(fake)`` does all of
this and works with both ``TwilioHttpClient`` (requests, sync) and
``AsyncTwilioHttpClient`` (aiohttp; use ``client.messages.create_async``).

Errors use Twilio's legacy JSON shape so the SDK raises ``TwilioRestException``
with ``.status`` and ``.code`` (e.g. 21211) set.

``GET .../Messages.json`` lists accepted messages newest first, filtered by ``To``, ``From``
and ``DateSent``/``DateSent<``/``DateSent>`` (by day, as Twilio does; queued messages have
no date_sent), paged with ``PageSize`` and ``Page``. ``accept_delay`` holds each create's
answer for that many seconds *after* the message is accepted: a client killed meanwhile
never learns that Twilio has it, which is what an in-doubt message is.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from ._ratelimit import RateMeter
from .httpserver import BackgroundServer

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# GSM 03.38: the basic set costs one septet, the extension table two.
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class TwilioMessage:
    """One accepted message; ``received_at`` is ``time.monotonic()``."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    received_at: float
    params: dict[str, list[str]] = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeTwilio(BackgroundServer):
    """Twilio Messages API fake; mutate the injection attributes at any time."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        invalid_numbers: Iterable[str] = (),
        opted_out_numbers: Iterable[str] = (),
        transient_error_rate: float = 0.0,
        transient_429_share: float = 0.5,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        accept_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.accept_delay = accept_delay
        self.list_requests = 0
        self.auth_token = auth_token
        self.invalid_numbers = set(invalid_numbers)
        self.opted_out_numbers = set(opted_out_numbers)
        self.transient_error_rate = transient_error_rate
        self.transient_429_share = transient_429_share  # rest are HTTP 500
        self.rate = RateMeter(rate_limit, rate_burst)
        self.attempts = 0  # authenticated send requests, whatever the outcome
        self.error_counts: Counter[int] = Counter()  # Twilio error code -> count
        self._rng = random.Random(seed)  # seeded so failure patterns are reproducible
        self._lock = threading.Lock()  # the server thread writes, the test thread reads
        self._messages: list[TwilioMessage] = []
        path = "/2010-04-01/Accounts/{account_sid}/Messages.json"
        routes = [
            Route(path, self._create_message, methods=["POST"]),
            Route(path, self._list_messages, methods=["GET"]),
        ]
        super().__init__(Starlette(routes=routes))

    @property
    def messages(self) -> list[TwilioMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def max_observed_rate(self) -> int:
        """Most send requests seen in any sliding 1-second window."""
        return self.rate.max_observed_rate

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """``X-Twilio-Signature`` Twilio would send when POSTing ``params`` to ``url``."""
        return twilio_signature(self.auth_token, url, params)

    def status_callback_params(
        self, message: TwilioMessage, status: str = "delivered", error_code: int | None = None
    ) -> dict[str, str]:
        """Form fields of the status callback Twilio POSTs to ``StatusCallback``."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": message.to,
            "From": message.from_ or "",
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    async def _create_message(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        form = parse_qs((await request.body()).decode(), keep_blank_values=True)
        rejection = self._admit() or self._validate(form)
        if rejection is not None:
            return rejection
        accepted = self._accept(form)
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        return accepted

    async def _list_messages(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        with self._lock:
            self.list_requests += 1
        query = request.query_params
        found = [m for m in reversed(self.messages) if _matches(m, query)]
        size = max(1, min(1000, int(query.get("PageSize", "50"))))
        page = max(0, int(query.get("Page", "0")))
        chunk = found[page * size : (page + 1) * size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        more = (page + 1) * size < len(found)
        next_query = {**dict(query), "Page": str(page + 1), "PageSize": str(size)}
        payload = {
            "messages": [self._resource(m) for m in chunk],
            "page": page,
            "page_size": size,
            "start": page * size,
            "end": page * size + max(0, len(chunk) - 1),
            "uri": f"{base}?{urlencode(dict(query))}",
            "first_page_uri": f"{base}?{urlencode({**dict(query), 'Page': '0'})}",
            "previous_page_uri": None,
            "next_page_uri": f"{base}?{urlencode(next_query)}" if more else None,
        }
        return JSONResponse(payload)

    def _authorized(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return (
            scheme.lower() == "basic"
            and request.path_params["account_sid"] == user
            and hmac.compare_digest(user, self.account_sid)
            and hmac.compare_digest(password, self.auth_token)
        )

    def _admit(self) -> JSONResponse | None:
        """Rate limit first (it sees every attempt), then random transient failures."""
        with self._lock:
            self.attempts += 1
        if not self.rate.hit():
            return self._error(429, 20429, "Too Many Requests")
        if self._rng.random() >= self.transient_error_rate:
            return None
        if self._rng.random() < self.transient_429_share:
            return self._error(429, 20429, "Too Many Requests")
        return self._error(500, 20500, "Internal Server Error")

    def _validate(self, form: dict[str, list[str]]) -> JSONResponse | None:
        to, body = _first(form, "To"), _first(form, "Body") or ""
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not (_first(form, "From") or _first(form, "MessagingServiceSid")):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not (body or form.get("MediaUrl") or form.get("ContentSid")):
            return self._error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if to in self.invalid_numbers or not _E164.match(to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if to in self.opted_out_numbers:
            return self._error(400, 21610, "Attempt to send to unsubscribed recipient")
        return None

    def _accept(self, form: dict[str, list[str]]) -> JSONResponse:
        msg = TwilioMessage(
            sid="SM" + secrets.token_hex(16),
            to=_first(form, "To") or "",
            from_=_first(form, "From"),
            messaging_service_sid=_first(form, "MessagingServiceSid"),
            body=_first(form, "Body") or "",
            status_callback=_first(form, "StatusCallback"),
            received_at=time.monotonic(),
            params=form,
        )
        with self._lock:
            self._messages.append(msg)
        return JSONResponse(self._resource(msg), status_code=201)

    def _resource(self, msg: TwilioMessage) -> dict[str, Any]:
        now = format_datetime(msg.created_at, usegmt=True)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{msg.sid}"
        # A Messaging Service send starts as "accepted" until a sender is picked.
        status = "queued" if msg.from_ else "accepted"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": msg.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": msg.from_,
            "messaging_service_sid": msg.messaging_service_sid,
            "num_media": str(len(msg.params.get("MediaUrl", []))),
            "num_segments": str(num_segments(msg.body)),
            "price": None,
            "price_unit": "USD",
            "sid": msg.sid,
            "status": status,
            "to": msg.to,
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "uri": f"{uri}.json",
        }

    def _error(self, status: int, code: int, message: str) -> JSONResponse:
        with self._lock:
            self.error_counts[code] += 1
        payload = {
            "code": code,
            "message": message,
            "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
        }
        return JSONResponse(payload, status_code=status)


def num_segments(body: str) -> int:
    """SMS segment count: GSM-7 160/153 septets, otherwise UCS-2 70/67 units."""
    if all(c in _GSM7 or c in _GSM7_EXT for c in body):
        units, single, multi = sum(2 if c in _GSM7_EXT else 1 for c in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """Compute ``X-Twilio-Signature`` with the SDK's own ``RequestValidator``."""
    signature: str = RequestValidator(auth_token).compute_signature(url, dict(params))
    return signature


def twilio_client_for(fake: FakeTwilio, http_client: Any = None) -> Client:
    """An official SDK ``Client`` whose API calls land on ``fake``."""
    client = Client(fake.account_sid, fake.auth_token, http_client=http_client)
    client.region = client.edge = None  # else get_hostname() rewrites 127.0.0.1:port
    client.api.base_url = fake.base_url
    return client


def _matches(message: TwilioMessage, query: Mapping[str, str]) -> bool:
    """Twilio's list filters. Accepted messages count as sent on the day they came in."""
    day = message.created_at.date()
    checks: dict[str, Callable[[str], bool]] = {
        "To": lambda v: message.to == v,
        "From": lambda v: message.from_ == v,
        "DateSent": lambda v: day == _day(v),
        "DateSent<": lambda v: day <= _day(v),
        "DateSent>": lambda v: day >= _day(v),
    }
    return all(check(query[key]) for key, check in checks.items() if key in query)


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


def _first(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None


class SlowFakeTwilio(FakeTwilio):
    """FakeTwilio answering after ``delay`` seconds and counting requests in flight, plus
    the client ports it saw (one port per TCP connection the sender opened)."""

    def __init__(self, delay: float, **kwargs: object) -> None:
        self.delay = delay
        self.in_flight = self.max_in_flight = 0
        self.client_ports: set[int] = set()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def _create_message(self, request: Request) -> JSONResponse:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if request.client is not None:
                self.client_ports.add(request.client.port)
        try:
            await asyncio.sleep(self.delay)
            return await super()._create_message(request)
        finally:
            with self._lock:
                self.in_flight -= 1
