"""Health, readiness and metrics for operators and orchestrators."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from backinstock.deps import RuntimeDep
from backinstock.dispatch import outcomes
from backinstock.ops.metrics import IN_DOUBT_MESSAGES

router = APIRouter(tags=["operations"])


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
    """Prometheus text exposition."""
    await _read_in_doubt(runtime)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _read_in_doubt(runtime: RuntimeDep) -> None:
    """Crash resolutions are counted where they are recorded, in the database, so one
    scrape of any API process sees every worker's (a partial index keeps it cheap)."""
    try:
        async with runtime.sessions() as session:
            counts = await outcomes.in_doubt_counts(session)
    except Exception:  # the database is down: /readyz says so; keep the last figures
        return
    IN_DOUBT_MESSAGES.clear()
    for channel, resolution, messages in counts:
        IN_DOUBT_MESSAGES.labels(channel=channel, resolution=resolution).set(messages)
