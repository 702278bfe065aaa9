from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from backinstock.catalog.substitutes import MAX_SUBSTITUTES
from backinstock.conversions import clicks
from backinstock.conversions.schemas import OrderIn, OrderOut
from backinstock.deps import InventoryKey, RuntimeDep, SessionDep
from backinstock.errors import error_responses
from backinstock.fields import DIGITS
from backinstock.flows import orders
from backinstock.strict_json import StrictJsonRoute
from backinstock.subscriptions import pages

router = APIRouter(route_class=StrictJsonRoute)

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@router.post(
    "/v1/orders",
    operation_id="postOrder",
    tags=["stock"],
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses={
        200: {"model": OrderOut, "description": "A replay of a known order_id: nothing done"},
        **error_responses(400, 401, 403, 413, 422),
    },
)
async def post_order(
    payload: OrderIn, session: SessionDep, runtime: RuntimeDep, _: InventoryKey
) -> Response:
    """Report an order. Idempotent on ``order_id``. Each SKU of the order is attributed to
    the shopper's latest message about it within ATTRIBUTION_WINDOW_SECONDS, found by the
    tracked link's ``notification_token``, else the coupon, else the buyer's contact or
    customer id; the subscription is then converted and stops waiting."""
    answer, replayed = await orders.record(session, runtime.settings, runtime.keys, payload)
    code = status.HTTP_200_OK if replayed else status.HTTP_201_CREATED
    return JSONResponse(answer.model_dump(mode="json"), status_code=code)


@router.get(
    "/r/{token}",
    operation_id="followTrackedLink",
    tags=["shoppers"],
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    responses={
        204: {"description": "With redirect=0 (a WeChat mini-program reporting the open)"},
        404: {"description": "Unknown or forged token: an HTML page, never a redirect"},
    },
)
async def follow_tracked_link(
    token: str,
    session: SessionDep,
    runtime: RuntimeDep,
    redirect: Annotated[int, Query(ge=0, le=1, description="0: count, answer 204"), DIGITS] = 1,
) -> Response:
    """Count the click and redirect (302) to the product with ``utm_source=backinstock``,
    ``utm_medium=<channel>`` and ``bis_token=<token>`` added."""
    target = await clicks.record_click(session, runtime.settings, runtime.keys, token)
    return _followed(target, redirect)


@router.get(
    "/r/{token}/{position}",
    operation_id="followSubstituteLink",
    tags=["shoppers"],
    status_code=status.HTTP_302_FOUND,
    response_class=RedirectResponse,
    responses={
        204: {"description": "With redirect=0 (a WeChat mini-program reporting the open)"},
        404: {"description": "Unknown or forged token, or no such substitute in the message"},
    },
)
async def follow_substitute_link(
    token: str,
    position: Annotated[
        int,
        Path(ge=1, le=MAX_SUBSTITUTES, description="The substitute's place in the message"),
        DIGITS,
    ],
    session: SessionDep,
    runtime: RuntimeDep,
    redirect: Annotated[int, Query(ge=0, le=1, description="0: count, answer 204"), DIGITS] = 1,
) -> Response:
    """A substitute message's link to one of the substitutes it names: count the click on
    that substitute and redirect (302) to its product page with ``utm_source=backinstock``,
    ``utm_medium=<channel>`` and the message's ``bis_token`` added. An order of that
    substitute carrying the token counts as saved by a substitute."""
    target = await clicks.record_substitute_click(
        session, runtime.settings, runtime.keys, token, position
    )
    return _followed(target, redirect)


def _followed(target: str | None, redirect: int) -> Response:
    if target is None:
        return HTMLResponse(pages.invalid_link(), status_code=404, headers=_NO_STORE)
    if not redirect:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers=_NO_STORE)
    return RedirectResponse(target, status_code=status.HTTP_302_FOUND, headers=_NO_STORE)
