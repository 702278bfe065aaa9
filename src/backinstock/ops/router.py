"""Health, readiness and metrics for operators and orchestrators."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from backinstock.deps import RuntimeDep
from backinstock.stats import pipeline

router = APIRouter(tags=["operations"])
# The pipeline figures are this process's to serve: registered with the API, never in a
# worker process (whose metrics endpoint serves what its processes count).
REGISTRY.register(pipeline.collector())


class ReadinessChecks(BaseModel):
    database: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable"] = Field(
        description="Redis (production mode); always ok with the embedded broker"
    )


class Readiness(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="degraded: Redis is down; the API answers, messages wait until it returns"
    )
    checks: ReadinessChecks


@router.get("/healthz", operation_id="health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the database is down"}},
)
async def ready(runtime: RuntimeDep) -> Response:
    """Ready while the database answers. Redis only speeds things up (wake-ups, shared rate
    limits): without it the API still answers correctly, so a Redis outage reports
    ``degraded`` with 200, and taking every API instance out of rotation over it would turn
    a slowdown into an outage. Only an unreachable database answers 503."""
    checks = {"database": await _database_ok(runtime), "broker": await _broker_ok(runtime)}
    if checks["database"] != "ok":
        state, code = "unavailable", 503
    elif checks["broker"] != "ok":
        state, code = "degraded", 200
    else:
        state, code = "ok", 200
    return JSONResponse({"status": state, "checks": checks}, status_code=code)


async def _database_ok(runtime: RuntimeDep) -> str:
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return "unreachable"
    return "ok"


async def _broker_ok(runtime: RuntimeDep) -> str:
    if runtime.redis is None:
        return "ok"  # the embedded broker lives in this process
    try:
        await runtime.redis.ping()
    except Exception:
        return "unreachable"
    return "ok"


@router.get("/metrics", operation_id="metrics", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text exposition: this process's HTTP and business counters, and the
    delivery pipeline read from the database (so that one scrape sees every worker):
    notifications by status and channel, due work and the oldest due, the last message
    sent, open waves, restock → first and last message latency, crash resolutions, each
    stock feed's last event and whether Redis answers. The database is read at most
    every ``METRICS_CACHE_SECONDS`` (default 4). In the embedded mode the workers run in
    this process, and their counters are here too. docs/operations.md lists every metric."""
    await runtime.pipeline.refresh(
        runtime.sessions, runtime.settings, runtime.redis, runtime.clock.now()
    )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
