"""The operators' view of messages a crash left in flight, and how each was settled."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from backinstock import cursors
from backinstock.deps import AdminKey, SessionDep
from backinstock.dispatch.models import InDoubt, Notification
from backinstock.errors import error_responses

router = APIRouter(tags=["operations"])


class InDoubtItem(BaseModel):
    notification_id: uuid.UUID
    subscription_id: uuid.UUID
    sku: str
    channel: str | None
    status: str
    resolution: InDoubt
    attempts: int
    provider_id: str | None
    created_at: datetime
    sent_at: datetime | None


class InDoubtPage(BaseModel):
    items: list[InDoubtItem]
    next_cursor: str | None


@router.get(
    "/v1/notifications/in-doubt",
    operation_id="listInDoubtNotifications",
    response_model=InDoubtPage,
    responses=error_responses(401, 403, 422),
)
async def list_in_doubt(
    session: SessionDep,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    channel: Annotated[str | None, Query(max_length=16, pattern="^[a-z]+$")] = None,
    resolution: InDoubt | None = None,
) -> InDoubtPage:
    """Newest first: every message whose provider call was in flight when a worker died,
    and its settlement (`unresolved` until its channel's policy acts; then `found` in the
    provider's records, settled by a status `callback`, `resent`, or `dropped`)."""
    query = (
        select(Notification)
        .where(Notification.in_doubt.is_not(None))
        .order_by(Notification.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        query = query.where(Notification.id < cursors.decode_id(cursor))
    if channel:
        query = query.where(Notification.channel == channel)
    if resolution:
        query = query.where(Notification.in_doubt == resolution)
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return InDoubtPage(
        items=[
            InDoubtItem(
                notification_id=n.id,
                subscription_id=n.subscription_id,
                sku=n.sku,
                channel=n.channel,
                status=n.status,
                resolution=InDoubt(n.in_doubt or InDoubt.UNRESOLVED),
                attempts=n.attempts,
                provider_id=n.provider_id,
                created_at=n.created_at,
                sent_at=n.sent_at,
            )
            for n in page
        ],
        next_cursor=cursors.encode_id(page[-1].id) if more else None,
    )
