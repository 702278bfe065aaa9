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
from backinstock.config import Settings
from backinstock.conversions.router import router as conversions_router
from backinstock.coupons.router import router as coupons_router
from backinstock.dashboard import router as dashboard
from backinstock.dispatch.in_doubt_router import router as in_doubt_router
from backinstock.dispatch.router import router as outbox_router
from backinstock.errors import ERROR_DESCRIPTIONS, install_error_handlers, remember_routes
from backinstock.ops.logging import configure_logging
from backinstock.ops.middleware import RequestContextMiddleware
from backinstock.ops.router import router as ops_router
from backinstock.privacy.router import router as privacy_router
from backinstock.providers.router import router as providers_router
from backinstock.restocks.router import router as restocks_router
from backinstock.runtime import Runtime
from backinstock.stats.router import router as stats_router
from backinstock.subscriptions.router import router as subscriptions_router

DESCRIPTION = """Back-in-stock notifications: shoppers subscribe to a sold-out SKU; restocks
notify them fairly (VIPs first, then registration order) in batches sized to the stock."""


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
    routers = (
        subscriptions_router,
        restocks_router,
        conversions_router,
        coupons_router,
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
