from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from backinstock.catalog import policy as product_policy
from backinstock.catalog.schemas import PolicyIn, PolicyOut
from backinstock.db import utcnow
from backinstock.deps import AdminKey, RuntimeDep, SessionDep
from backinstock.errors import error_responses
from backinstock.strict_json import StrictJsonRoute

router = APIRouter(tags=["products"], route_class=StrictJsonRoute)

# ``:path``: a SKU may hold a slash (printable ASCII without spaces), sent as %2F or not.
# A SKU of "." or "..", or with such a segment, is resolved away by clients before it is
# sent: that URL names no product (404).
POLICY_PATH = "/v1/products/{sku:path}/policy"
SkuPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description="The product's SKU (printable ASCII without spaces).",
    ),
]


@router.get(
    POLICY_PATH,
    operation_id="getProductPolicy",
    response_model=PolicyOut,
    responses=error_responses(401, 403, 404, 422),
)
async def get_policy(
    sku: SkuPath, session: SessionDep, runtime: RuntimeDep, _: AdminKey
) -> PolicyOut:
    """The SKU's rules as they apply now: each one's value, and whether it is the SKU's own
    (`product`) or the setting (`settings`). A SKU without overrides, or not known yet,
    answers the settings."""
    return await product_policy.show(session, runtime.settings, sku)


@router.put(
    POLICY_PATH,
    operation_id="replaceProductPolicy",
    response_model=PolicyOut,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
async def replace_policy(
    sku: SkuPath, payload: PolicyIn, session: SessionDep, runtime: RuntimeDep, _: AdminKey
) -> PolicyOut:
    """Replace the SKU's overrides with the body's: a rule left out or `null` goes back to
    the setting (`{}` removes them all). Each takes the setting's own bounds; an unknown
    name is a 422. They apply from the next time each is used: the SKU's next wave step
    (its size, and when the step after it is due), the next restock's `first_wave`, the
    next follow-up decision, the next subscription. Answers what GET answers."""
    await product_policy.replace(session, sku, payload, utcnow())
    return await product_policy.show(session, runtime.settings, sku)
