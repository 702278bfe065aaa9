"""``/v1/products/{sku}/substitutes``: the SKUs shoppers are shown instead while a product
is sold out.

The API shapes are here rather than in ``catalog.schemas``: a substitute is a SKU by the
subscriptions' rule (``subscriptions.schemas.Sku``), and below the web floor catalog may
not import subscriptions (subscriptions import catalog)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog import substitutes
from backinstock.catalog.router import SkuPath
from backinstock.catalog.substitutes import MAX_SUBSTITUTES
from backinstock.deps import InventoryOrAdminKey, SessionDep
from backinstock.errors import InvalidField, error_responses
from backinstock.fields import RequestBody
from backinstock.restocks import substitutes as shown
from backinstock.strict_json import StrictJsonRoute
from backinstock.subscriptions.schemas import Sku

router = APIRouter(tags=["products"], route_class=StrictJsonRoute)

# ``:path``: a SKU may hold a slash (printable ASCII without spaces), sent as %2F or not.
SUBSTITUTES_PATH = "/v1/products/{sku:path}/substitutes"


class SubstitutesIn(RequestBody):
    """The product's whole list of substitutes, in the order shoppers see them: it
    replaces the one before (``[]`` removes them all)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"substitutes": ["TSHIRT-BLUE-M", "TSHIRT-RED-L"]}]}
    )

    substitutes: list[Sku] = Field(
        max_length=MAX_SUBSTITUTES,
        json_schema_extra={"uniqueItems": True},
        description=f"Up to {MAX_SUBSTITUTES} other SKUs, each once, not the product itself.",
    )


class SubstituteStock(BaseModel):
    sku: str
    in_stock: bool = Field(description="Its level (the sum over its locations) is above 0 now.")


class SubstitutesOut(BaseModel):
    sku: str
    substitutes: list[SubstituteStock] = Field(
        description="In the order listed; while the product is sold out, shoppers are shown "
        "those in stock."
    )


@router.get(
    SUBSTITUTES_PATH,
    operation_id="getProductSubstitutes",
    response_model=SubstitutesOut,
    responses=error_responses(401, 403, 422),
)
async def get_substitutes(
    sku: SkuPath, session: SessionDep, _: InventoryOrAdminKey
) -> SubstitutesOut:
    """The product's substitutes in order, each with whether it is in stock now (scope
    `inventory` or `admin`). A SKU without substitutes, or not known yet, has none."""
    return await _listed(session, sku)


@router.put(
    SUBSTITUTES_PATH,
    operation_id="replaceProductSubstitutes",
    response_model=SubstitutesOut,
    responses=error_responses(400, 401, 403, 413, 422),
)
async def replace_substitutes(
    sku: SkuPath, payload: SubstitutesIn, session: SessionDep, _: InventoryOrAdminKey
) -> SubstitutesOut:
    """Replace the product's substitutes (scope `inventory` or `admin`): at most
    10 SKUs, each once, not the product itself (else 422). While the product is sold out,
    those in stock are named, in this order, in the answer to `POST /v1/subscriptions`
    and on the shopper's page. Answers what GET answers."""
    seen: dict[str, int] = {}
    for index, substitute in enumerate(payload.substitutes):
        field = f"substitutes.{index}"
        if substitute == sku:
            raise InvalidField(field, "is the product itself")
        if substitute in seen:
            raise InvalidField(field, f"repeats substitutes.{seen[substitute]}")
        seen[substitute] = index
    await substitutes.replace(session, sku, payload.substitutes)
    return await _listed(session, sku)


async def _listed(session: AsyncSession, sku: str) -> SubstitutesOut:
    listed = await shown.listed_in_stock(session, sku)
    return SubstitutesOut(
        sku=sku,
        substitutes=[SubstituteStock(sku=s, in_stock=in_stock) for s, in_stock in listed],
    )
