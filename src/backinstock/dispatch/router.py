"""The dev outbox: what would have been sent on channels with no provider configured."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from backinstock import cursors
from backinstock.deps import AdminKey, RuntimeDep, SessionDep
from backinstock.errors import error_responses
from backinstock.senders.models import DevOutboxMessage
from backinstock.senders.outbox import OutboxContent, open_content

router = APIRouter(tags=["operations"])


class OutboxItem(BaseModel):
    id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    to: str  # masked
    subject: str | None
    body: str
    created_at: datetime


class OutboxPage(BaseModel):
    items: list[OutboxItem]
    next_cursor: str | None


def _item(row: DevOutboxMessage, content: OutboxContent) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        notification_id=row.notification_id,
        channel=row.channel,
        to=row.recipient_masked,
        subject=content.subject,
        body=content.body,
        created_at=row.created_at,
    )


@router.get(
    "/v1/dev/outbox",
    operation_id="listDevOutbox",
    response_model=OutboxPage,
    responses=error_responses(401, 403, 422),
)
async def list_dev_outbox(
    session: SessionDep,
    runtime: RuntimeDep,
    _: AdminKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    channel: Annotated[str | None, Query(max_length=16, pattern="^[a-z]+$")] = None,
) -> OutboxPage:
    """Newest first. Recipients are masked; nothing here was sent to anyone. Subjects and
    bodies are stored sealed and opened only here, for an admin key."""
    query = select(DevOutboxMessage).order_by(DevOutboxMessage.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(DevOutboxMessage.id < cursors.decode_id(cursor))
    if channel:
        query = query.where(DevOutboxMessage.channel == channel)
    rows = list(await session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return OutboxPage(
        items=[_item(r, open_content(runtime.keys.cipher, r)) for r in page],
        next_cursor=cursors.encode_id(page[-1].id) if more else None,
    )
