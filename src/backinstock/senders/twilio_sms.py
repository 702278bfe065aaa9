"""SMS through Twilio Programmable Messaging, with the official SDK's async client.

Each message is one ``POST .../Messages.json``; a batch is sent concurrently, bounded by a
semaphore, and every message gets its own classified result, so one failure never costs
the results of the others. Each create is reported to the dispatcher's journal as it starts
and ends. Twilio has no idempotency key for message creation, so a message whose create was
in flight when a worker died is looked up afterwards (:meth:`TwilioSmsSender.find_sent`, in
Twilio's Messages list) instead of being sent blindly again.

Phone numbers and bodies stay out of results and logs; Twilio's own error messages are
never logged either, because some of them quote the ``To`` number.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import structlog
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from backinstock.config import TwilioSettings
from backinstock.senders.base import UNRECORDED, Journal, Outcome, OutgoingMessage, SendResult

log = structlog.get_logger(__name__)

# Twilio error codes that say "this recipient (or this message) will never work": retrying
# only burns attempts and money. https://www.twilio.com/docs/api/errors
PERMANENT_CODES: frozenset[int] = frozenset(
    {
        21211,  # invalid 'To' phone number
        21217,  # phone number does not appear to be valid
        21401,  # invalid phone number
        21407,  # this number type does not support SMS
        21408,  # SMS not enabled for the destination's region (geo permissions)
        21606,  # the 'From' number cannot send to this destination
        21610,  # recipient replied STOP (unsubscribed)
        21612,  # 'To' number not reachable via SMS
        21614,  # 'To' number is not a mobile number
        21617,  # body longer than 1600 characters
    }
)

# Codes that say "not now": throttling, full queues and account problems.
TRANSIENT_CODES: frozenset[int] = frozenset(
    {
        # Authentication failed / account not active. A misconfigured or rotated token is
        # our fault, not the shopper's: treating it as permanent would mark every contact
        # in the wave as failed. Retried, the messages go out once an operator fixes it.
        20003,
        20005,
        20429,  # too many requests
        14107,  # SMS send rate limit exceeded (answered with HTTP 400)
        21611,  # the 'From' number's outgoing queue is full (answered with HTTP 400)
    }
)
TRANSIENT_STATUSES: frozenset[int] = frozenset({401, 408, 429})  # 401: see 20003 above

DEFAULT_REQUEST_TIMEOUT = 10.0
# How many of a number's newest messages a lookup reads: a crash is settled within seconds
# to minutes, so the message sought is among the newest few sent to that number.
LOOKUP_LIMIT = 100


class TwilioSmsSender:
    channel = "sms"
    marks_starts = True

    def __init__(
        self,
        settings: TwilioSettings,
        status_callback_url: str | None,
        concurrency: int = 20,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._settings = settings
        self._status_callback_url = status_callback_url
        self._concurrency = concurrency
        self._request_timeout = request_timeout
        self._client: Any = None
        self._http: AsyncTwilioHttpClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit = asyncio.Semaphore(concurrency)

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]:
        if not messages:
            return []
        client = self._client_for_running_loop()
        limit = self._limit
        sends = (self._send(client, limit, m, journal) for m in messages)
        return [r for r in await asyncio.gather(*sends) if r is not None]

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> str | None:
        """The SID of ``message`` if Twilio accepted it at or after ``since``.

        Reads the newest messages to the number (To is Twilio's most selective filter;
        DateSent would miss messages still queued, whose date_sent is empty) and matches
        the body, which carries the notification's own tracked link."""
        client = self._client_for_running_loop()
        async with asyncio.timeout(self._request_timeout):
            listed = await client.messages.list_async(to=message.to, limit=LOOKUP_LIMIT)
        marker = message.link or message.text
        for item in listed:
            created = item.date_created
            if created is not None and created >= since and marker in (item.body or ""):
                return str(item.sid)
        return None

    async def close(self) -> None:
        http, self._http, self._client, self._loop = self._http, None, None, None
        if http is not None:
            await http.close()

    def _client_for_running_loop(self) -> Any:
        """One SDK client per event loop, created lazily: aiohttp binds its session to the
        loop it is created in, so it cannot be built in ``__init__`` (no loop yet) nor
        shared between loops."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client left on another loop cannot be closed from this one; it is dropped.
            self._http = AsyncTwilioHttpClient()
            self._client = self._build_client(self._http)
            # Shared by every batch on this loop (worker actors run side by side on one
            # loop): Twilio's concurrency limits are per account, not per batch. A
            # semaphore binds to the loop it first waits on, hence one per loop too.
            self._limit = asyncio.Semaphore(self._concurrency)
            self._loop = loop
        return self._client

    def _build_client(self, http: AsyncTwilioHttpClient) -> Any:
        s = self._settings
        client = Client(s.twilio_account_sid, s.twilio_auth_token, http_client=http)
        # twilio_api_base is the one place that decides where requests go (a regional
        # endpoint or a local fake). A region/edge, set here or through TWILIO_REGION /
        # TWILIO_EDGE, would make the SDK rewrite that host.
        client.region = client.edge = None
        client.api.base_url = s.twilio_api_base.rstrip("/")
        return client

    async def _send(
        self, client: Any, limit: asyncio.Semaphore, message: OutgoingMessage, journal: Journal
    ) -> SendResult | None:
        async with limit:  # in flight: at most `concurrency` creates per event loop
            return await journal.call(message, lambda: self._create(client, message))

    async def _create(self, client: Any, message: OutgoingMessage) -> SendResult:
        try:
            # The SDK sends with no timeout at all (it hands aiohttp timeout=None),
            # so a hung connection would hold the batch past its claim lease.
            async with asyncio.timeout(self._request_timeout):
                created = await client.messages.create_async(**self._params(message))
        except Exception as exc:  # every message gets a result, whatever happened
            return _failed(message, exc)
        return SendResult(message.notification_id, Outcome.SENT, provider_id=str(created.sid))

    def _params(self, message: OutgoingMessage) -> dict[str, str]:
        params = {"to": message.to, "body": message.text}
        # A Messaging Service picks the sender from its pool (and handles opt-outs,
        # geo-matching); it wins over a single From number when both are configured.
        if self._settings.twilio_messaging_service_sid:
            params["messaging_service_sid"] = self._settings.twilio_messaging_service_sid
        else:
            params["from_"] = self._settings.twilio_from
        if self._status_callback_url:
            # The notification id rides along, so a report about a message a crash left
            # in doubt (its SID never recorded) still settles it.
            query = urlencode({"n": str(message.notification_id)})
            params["status_callback"] = f"{self._status_callback_url}?{query}"
        return params


def classify(exc: BaseException) -> tuple[Outcome, str]:
    """The outcome and the ``error`` for a failed create; never mentions the recipient."""
    if isinstance(exc, TwilioRestException):
        return _classify_rest(_int_or_none(exc.status) or 0, _int_or_none(exc.code))
    if isinstance(exc, TimeoutError):  # also aiohttp's timeouts, which subclass it
        # In doubt: Twilio may have accepted the message, so a retry can duplicate it.
        # Accepted: a rare second SMS is better than silently dropping a shopper's alert.
        return Outcome.TRANSIENT, "twilio:timeout"
    if isinstance(exc, aiohttp.ClientError):
        return Outcome.TRANSIENT, "twilio:connection"
    # Anything else (an unparsable reply, an SDK bug): retrying is cheap and bounded by
    # the dispatcher's attempt limit; giving up would drop a shopper for our own fault.
    return Outcome.TRANSIENT, "twilio:unexpected"


def _classify_rest(status: int, code: int | None) -> tuple[Outcome, str]:
    error = f"twilio:{code if code is not None else status}"
    if code in PERMANENT_CODES:
        return Outcome.PERMANENT, error
    if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES or status >= 500:
        return Outcome.TRANSIENT, error
    if 400 <= status < 500:
        return Outcome.PERMANENT, error  # Twilio refused this very request
    return Outcome.TRANSIENT, error  # e.g. a redirect from a proxy: not the shopper's fault


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _failed(message: OutgoingMessage, exc: Exception) -> SendResult:
    outcome, error = classify(exc)
    # Only our own identifiers and Twilio's code: never the number, body or Twilio's text.
    log.warning(
        "twilio_send_failed",
        notification_id=str(message.notification_id),
        outcome=outcome.value,
        error=error,
        exc_type=type(exc).__name__,
    )
    return SendResult(message.notification_id, outcome, error=error)
