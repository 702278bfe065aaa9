"""Many waiting shoppers, written straight into the database through the service's own
row builder (the API would take minutes for thousands).

The rows go in as one multi-row INSERT per chunk: the service's own INSERT answers each
shopper's queue position, a scan of the queue per row (seconds at 5,000, minutes at
20,000), which a seed has no use for. Each row is the one the service would write: the same
builder (status ``waiting``), no notification yet."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert

from backinstock import db
from backinstock.contacts import Channel
from backinstock.identity import NormalizedContact
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Status, Subscription
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from tests.helpers import phone

CHUNK = 1000  # rows per INSERT


def contact_for(channel: Channel, n: int) -> str:
    """A distinct valid contact per n on ``channel``."""
    if channel is Channel.EMAIL:
        return f"shopper{n}@mailbox.example"
    if channel is Channel.WECHAT:
        return f"oShopper{n:020d}"
    return phone(n)


async def seed_waiting(
    runtime: Runtime, n: int, sku: str = "SKU-1", channel: Channel = Channel.SMS
) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    rows: list[dict[str, Any]] = []
    for i in range(n):
        contact = NormalizedContact(channel, contact_for(channel, i))
        payload = SubscriptionCreate(sku=sku, channel=channel, contact=contact.value)
        index = runtime.keys.blind_index.digest(contact.index_form)
        row = _NewSubscription.build(runtime.keys, payload, contact, index)
        ids.append(row.id)
        assert row.params["status"] == Status.WAITING.value
        rows.append(row.params | {"notification_count": 0, "updated_at": row.params["created_at"]})
    async with db.transaction(runtime.sessions) as session:
        for start in range(0, n, CHUNK):
            await session.execute(insert(Subscription), rows[start : start + CHUNK])
    return ids
