from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from fastapi.responses import JSONResponse

from backinstock import db, tasks
from backinstock.deps import InventoryKey, RuntimeDep, SessionDep
from backinstock.dispatch import service as dispatch
from backinstock.errors import ApiError, NotFound, error_responses
from backinstock.flows import restock, stock_sync
from backinstock.identity import CLICK_TOKEN
from backinstock.restocks import holds, waves
from backinstock.restocks import service as stock
from backinstock.restocks.models import HoldState
from backinstock.restocks.schemas import (
    BatchItemOut,
    HoldOut,
    RestockBatchIn,
    RestockBatchOut,
    RestockIn,
    RestockOut,
    StockOut,
)
from backinstock.strict_json import StrictJsonRoute

router = APIRouter(tags=["stock"], route_class=StrictJsonRoute)

SkuPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description="The product's SKU (printable ASCII without spaces).",
    ),
]


class HoldGone(ApiError):
    status, code = 410, "gone"


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
    outcome = await restock.record(session, runtime.settings, payload, runtime.clock.now())
    if outcome.wave_due is not None:
        wave_id = outcome.wave_due
        db.after_commit(session, lambda: tasks.wake_wave(wave_id))
    if outcome.compensations:
        compensations = outcome.compensations
        db.after_commit(session, lambda: _wake_senders(compensations))
    code = status.HTTP_200_OK if outcome.replay else status.HTTP_202_ACCEPTED
    return JSONResponse(outcome.result.model_dump(mode="json"), status_code=code)


@router.post(
    "/v1/restocks/batch",
    operation_id="postStockLevels",
    response_model=RestockBatchOut,
    responses=error_responses(400, 401, 403, 413, 422),
)
async def post_stock_levels(
    payload: RestockBatchIn, session: SessionDep, runtime: RuntimeDep, _: InventoryKey
) -> RestockBatchOut:
    """A catalogue sync: up to 1,000 stock events in one request, each with the meaning it
    has alone (idempotent per location and `event_id`, the latest `occurred_at` wins) and its
    own answer in `results`, in order. A refused event fails alone. Events of one SKU in one
    request move its wave once, from its level before the request to its level after; the
    answers carry the SKU's level after the request, and `first_wave` is on the SKU's last
    applied event."""
    outcome = await stock_sync.record_batch(
        session, runtime.settings, payload.levels, runtime.clock.now()
    )
    if outcome.waves_due:
        waves_due = outcome.waves_due
        db.after_commit(session, lambda: _wake_waves(waves_due))
    if outcome.compensations:
        compensations = outcome.compensations
        db.after_commit(session, lambda: _wake_senders(compensations))
    results = [
        BatchItemOut(index=i, status=item.status, result=item.result, error=item.error)
        for i, item in enumerate(outcome.items)
    ]
    return RestockBatchOut(
        recorded=sum(r.status == 202 for r in results),
        replayed=sum(r.status == 200 for r in results),
        refused=sum(r.status == 422 for r in results),
        results=results,
    )


def _wake_waves(ids: list[uuid.UUID]) -> None:
    for wave_id in ids:
        tasks.wake_wave(wave_id)


def _wake_senders(ids: list[uuid.UUID]) -> None:
    for start in range(0, len(ids), dispatch.BATCH):
        tasks.enqueue(tasks.SEND, [str(i) for i in ids[start : start + dispatch.BATCH]])


@router.get(
    "/v1/stock/{sku:path}",
    operation_id="getStock",
    response_model=StockOut,
    responses=error_responses(401, 403, 422),
)
async def get_stock(
    sku: SkuPath, session: SessionDep, runtime: RuntimeDep, _: InventoryKey
) -> StockOut:
    """The SKU's level, the units held for shoppers told it is back, and the units free
    for anyone (an unknown SKU has level 0)."""
    level = await stock.current_level(session, sku)
    held = await holds.held(session, sku, runtime.clock.now())
    return StockOut(sku=sku, level=level, held=held, free=waves.free_units(level, held))


@router.get(
    "/v1/holds/{bis_token}",
    operation_id="getHold",
    response_model=HoldOut,
    responses={
        404: {"description": "Unknown or forged token, or a message without a hold"},
        410: {"description": "The hold expired, was consumed by an order or ended (sold out)"},
    },
)
async def get_hold(bis_token: str, session: SessionDep, runtime: RuntimeDep) -> HoldOut:
    """The unit held for the shopper whose tracked link carried ``bis_token`` (the product
    page's query parameter): the SKU, and until when it is theirs. No key: the token is
    the shopper's own, so a checkout page can ask."""
    notification_id = runtime.keys.tokens.verify(CLICK_TOKEN, bis_token)
    hold = None if notification_id is None else await holds.of_message(session, notification_id)
    if hold is None:
        raise NotFound("No hold for this token.")
    if hold.state != HoldState.HELD or hold.until <= runtime.clock.now():
        raise HoldGone("This hold expired, was used by an order or ended with a sell-out.")
    return HoldOut(sku=hold.sku, until=hold.until)
