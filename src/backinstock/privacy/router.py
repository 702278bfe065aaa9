from __future__ import annotations

from fastapi import APIRouter

from backinstock.deps import AdminKey, RuntimeDep, SessionDep
from backinstock.errors import error_responses
from backinstock.privacy import service as privacy
from backinstock.strict_json import StrictJsonRoute
from backinstock.subscriptions.schemas import EraseRequest, EraseResult

router = APIRouter(tags=["privacy"], route_class=StrictJsonRoute)


@router.post(
    "/v1/privacy/erase",
    operation_id="eraseContact",
    response_model=EraseResult,
    responses=error_responses(400, 401, 403, 413, 422),
)
async def erase_contact(
    payload: EraseRequest, session: SessionDep, runtime: RuntimeDep, _: AdminKey
) -> EraseResult:
    """Delete every subscription of a contact (as primary or fallback contact)."""
    erased = await privacy.erase_contact(
        session, runtime.settings, runtime.keys, payload.contact, payload.channel
    )
    return EraseResult(erased=erased)
