"""One pure-ASGI middleware for every request: a request id, a body-size limit, an access
log line and metrics. Pure ASGI (not BaseHTTPMiddleware) keeps the hot path cheap."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backinstock.errors import error_body
from backinstock.ops.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("backinstock.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class TooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            body = await self._read_body(scope, receive)
        except TooLarge:
            await _send_too_large(send_with_id, self.max_body_bytes)
        else:
            await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message]:
        """Buffer the body up to the limit; larger bodies are refused before any parsing."""
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise TooLarge
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                raise TooLarge
            if not message.get("more_body", False):
                return messages

    @staticmethod
    def _observe(scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path_format", None) or "unmatched"
        method = scope["method"]
        HTTP_REQUESTS.labels(method=method, route=path, status=str(status)).inc()
        HTTP_LATENCY.labels(method=method, route=path).observe(seconds)
        # The route template, not the raw path: tokens in /u/ and /r/ links stay out of logs.
        log.info("request", method=method, route=path, status=status, ms=round(seconds * 1000, 2))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """The buffered body first, then the server's own receive: streamed responses (files,
    CSV) wait on it for a real disconnect, so a made-up one would cut them short."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_too_large(send: Send, limit: int) -> None:
    import json

    body = json.dumps(
        error_body("payload_too_large", f"The request body exceeds {limit} bytes.")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
