"""Health, readiness and metrics for operators and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from backinstock.deps import RuntimeDep
from backinstock.dispatch import outcomes
from backinstock.ops.metrics import IN_DOUBT_MESSAGES

router = APIRouter(tags=["operations"])


@router.get("/healthz", operation_id="health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="ready", responses={503: {"description": "Not ready"}})
async def ready(runtime: RuntimeDep) -> Response:
    """The database and the broker answer."""
    checks = {"database": await _database_ok(runtime), "broker": await _broker_ok(runtime)}
    ok = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ok else 503)


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
