from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from backinstock import db, tasks
from backinstock.deps import InventoryKey, RuntimeDep, SessionDep
from backinstock.errors import error_responses
from backinstock.flows import restock
from backinstock.restocks.schemas import RestockIn, RestockOut
from backinstock.strict_json import StrictJsonRoute

router = APIRouter(tags=["stock"], route_class=StrictJsonRoute)


@router.post(
    "/v1/restocks",
    operation_id="postStockLevel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RestockOut,
    responses={
        200: {"model": RestockOut, "description": "A replay: the same event, nothing done"},
        **error_responses(400, 401, 403, 413, 422),
    },
)
async def post_stock_level(
    payload: RestockIn, session: SessionDep, runtime: RuntimeDep, _: InventoryKey
) -> Response:
    """Record a location's absolute stock level. Idempotent on (location, event_id); events
    older than the location's latest are recorded and ignored. 0 → sold out: the wave stops."""
    outcome = await restock.record(session, runtime.settings, payload)
    if outcome.wave_due is not None:
        wave_id = outcome.wave_due
        db.after_commit(session, lambda: tasks.wake_wave(wave_id))
    code = status.HTTP_200_OK if outcome.replay else status.HTTP_202_ACCEPTED
    return JSONResponse(outcome.result.model_dump(mode="json"), status_code=code)
