"""Health, readiness and metrics for operators and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from backinstock.deps import RuntimeDep

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
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
