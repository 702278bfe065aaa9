"""create_app(): routers, middleware, error handlers and the process's runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from backinstock import __version__
from backinstock.auth.service import KeyCache
from backinstock.catalog.router import router as catalog_router
from backinstock.catalog.substitutes_router import router as substitutes_router
from backinstock.config import Settings
from backinstock.conversions.router import router as conversions_router
from backinstock.coupons.router import router as coupons_router
from backinstock.dashboard import router as dashboard
from backinstock.dispatch.in_doubt_router import router as in_doubt_router
from backinstock.dispatch.router import router as outbox_router
from backinstock.errors import ERROR_DESCRIPTIONS, install_error_handlers, remember_routes
from backinstock.ops.cors import StorefrontCors
from backinstock.ops.heap import settle_heap
from backinstock.ops.logging import configure_logging
from backinstock.ops.middleware import RequestContextMiddleware
from backinstock.ops.router import router as ops_router
from backinstock.privacy.router import router as privacy_router
from backinstock.providers.router import router as providers_router
from backinstock.restocks.router import router as restocks_router
from backinstock.runtime import Runtime
from backinstock.senders.registry import load_configured
from backinstock.stats.router import router as stats_router
from backinstock.storefront.router import router as storefront_router
from backinstock.subscriptions.router import router as subscriptions_router

DESCRIPTION = """Back-in-stock notifications: shoppers subscribe to a sold-out SKU; restocks
notify them fairly (VIPs first, then registration order) in batches sized to the stock.

Input rules the schemas below cannot all say:

- Bodies are JSON (RFC 8259) in UTF-8, nested at most 32 deep; numbers are integers of at
  most 20 digits or finite decimals (no `NaN`, no `Infinity`, no `1e400`). Anything else is
  a 400 with code `malformed_json`.
- Every field takes its own JSON type only: an integer is not `true`, `"5"` or `5.0`; an
  instant, an amount or an IP address is a string, never a number; query integers are
  digits.
- Text fields hold one line: no NUL or other control characters (U+0000–U+001F,
  U+007F–U+009F), no U+2028/U+2029, no lone surrogates (such as U+D800 alone). Their
  maximum lengths are the columns that store them.
- Instants are RFC 3339 date-times with an offset (`Z` or `±hh:mm`), from
  1970-01-01T00:00:00Z to before 3000-01-01T00:00:00Z, answered in UTC; a leap second
  (`23:59:60`) counts as `23:59:59.999999`. A restock's or an order's `occurred_at` more
  than `MAX_CLOCK_SKEW_SECONDS` (default 300) in the future is refused.
- A product name that contains RFC 2047 encoded words (`=?utf-8?q?...?=`) is shown
  literally in email subjects and bodies, never decoded; line breaks never reach a header.

A refused field answers 422 with code `invalid_field`, naming the field in `details`
and never repeating its value."""


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        app.state.runtime = runtime or Runtime.create(settings)
        embedded = None
        if owned and settings.core.embedded_broker:
            from backinstock.worker import start_embedded_worker

            embedded = start_embedded_worker(settings.waves.embedded_worker_threads)
            # Its workers build their senders on their first message: their providers'
            # libraries are imported now, to be frozen with the rest. A server without
            # workers sends nothing, and never loads them.
            load_configured(settings)
        if owned:
            settle_heap()  # a server process, booted: see ops/heap.py
        try:
            yield
        finally:
            if embedded is not None:
                # The same drain as a worker's SIGTERM (see worker.py), bounded likewise.
                grace = settings.delivery.shutdown_grace_seconds
                embedded.stop(timeout=int((grace + 5) * 1000))
            if owned:
                await app.state.runtime.close()

    app = FastAPI(
        title="backinstock",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        separate_input_output_schemas=False,
    )
    app.state.key_cache = KeyCache()
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.core.max_body_bytes)
    # Added last, so outermost: every answer on its paths (a 413 included) carries the grant.
    app.add_middleware(StorefrontCors)
    routers = (
        subscriptions_router,
        storefront_router,
        restocks_router,
        catalog_router,
        conversions_router,
        coupons_router,
        substitutes_router,
        privacy_router,
        providers_router,
        stats_router,
        outbox_router,
        in_doubt_router,
        ops_router,
    )
    for router in routers:
        app.include_router(router)
    dashboard.install(app)
    remember_routes(app, [*routers, dashboard.router])
    app.openapi = _openapi_with_one_error_shape(app)  # type: ignore[method-assign]
    return app


def _openapi_with_one_error_shape(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents validation errors as its own HTTPValidationError; ours answer in
    the one error shape, so the published contract says so."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                separate_input_output_schemas=False,
            )
            text = json.dumps(schema).replace(
                "#/components/schemas/HTTPValidationError", "#/components/schemas/ErrorResponse"
            )
            schema = json.loads(text)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    response = operation.get("responses", {}).get("422")
                    if response and response.get("description") == "Validation Error":
                        response["description"] = ERROR_DESCRIPTIONS[422]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def app_from_env() -> FastAPI:
    """The uvicorn factory used by ``backinstock serve``."""
    settings = Settings.from_env()
    configure_logging(settings.core.log_level, settings.core.log_json)
    return create_app(settings)
