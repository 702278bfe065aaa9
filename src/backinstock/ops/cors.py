"""CORS for the storefront widget: a page on a publishable key's origin may POST
``/v1/subscriptions`` from the shopper's browser, and nothing else is opened to pages.

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) carries no Authorization
header, so it cannot say which key will be used: it is granted for every origin some
publishable key that is not revoked names (``auth.service.OriginCache``, re-read every few
seconds), and refused (403, no grant) for any other. The request that follows is checked
against its own key's origins (``deps.subscriber``). Answers to a granted origin carry the
grant too, errors included, so that a page can read the one error shape and a 429's
``Retry-After``; every answer on the path varies by ``Origin``.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backinstock.auth.service import OriginCache, request_origin
from backinstock.errors import error_body

log = structlog.get_logger(__name__)

PATHS = frozenset({"/v1/subscriptions"})
ALLOW_METHODS = "POST"
ALLOW_HEADERS = "Authorization, Content-Type"
EXPOSE_HEADERS = "Retry-After, X-Request-Id"
MAX_AGE_SECONDS = 600


class StorefrontCors:
    """Pure ASGI, outermost: even a 413 from the body limit carries the grant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.origins = OriginCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        sent_origin = headers.get("origin")
        granted = await self._granted(scope, sent_origin)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(send, sent_origin if granted else None)
            return

        async def send_with_grant(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers.add_vary_header("Origin")
                if granted and sent_origin is not None:
                    response_headers["Access-Control-Allow-Origin"] = sent_origin
                    response_headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_grant)

    async def _granted(self, scope: Scope, sent_origin: str | None) -> bool:
        origin = request_origin(sent_origin)
        if origin is None:
            return False
        runtime: Any = scope["app"].state.runtime
        try:
            return origin in await self.origins.get(runtime.sessions)
        except Exception as exc:  # the database may be restarting: no grant meanwhile
            log.warning("cors_origins_unavailable", error_type=type(exc).__name__)
            return False


async def _preflight(send: Send, origin: str | None) -> None:
    headers = [(b"vary", b"Origin")]
    if origin is None:
        body = json.dumps(
            error_body("forbidden", "This origin may not call this API from a browser.")
        ).encode()
        headers += [(b"content-type", b"application/json")]
        status = 403
    else:
        body = b""
        status = 204
        headers += [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
        ]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
