from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from backinstock.coupons import service as coupons
from backinstock.coupons.schemas import PoolIn, PoolOut
from backinstock.deps import AdminKey, SessionDep
from backinstock.errors import NotFound, error_responses
from backinstock.strict_json import StrictJsonRoute

router = APIRouter(tags=["coupons"], route_class=StrictJsonRoute)


@router.post(
    "/v1/coupons/pools",
    operation_id="uploadCouponPool",
    status_code=status.HTTP_201_CREATED,
    response_model=PoolOut,
    responses=error_responses(400, 401, 403, 409, 413, 422),
)
async def upload_pool(payload: PoolIn, session: SessionDep, _: AdminKey) -> PoolOut:
    """Upload a pool of coupon codes for follow-up messages. All or nothing: a code that
    repeats within the upload is a 422, one that is already known a 409."""
    return await coupons.create_pool(session, payload)


@router.get(
    "/v1/coupons/pools/{pool_id}",
    operation_id="getCouponPool",
    response_model=PoolOut,
    responses=error_responses(401, 403, 404),
)
async def get_pool(pool_id: uuid.UUID, session: SessionDep, _: AdminKey) -> PoolOut:
    """A pool with how many of its codes are issued, redeemed and still available."""
    summary = await coupons.pool_summary(session, pool_id)
    if summary is None:
        raise NotFound("No coupon pool with this id.")
    return summary
