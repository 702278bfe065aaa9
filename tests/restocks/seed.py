"""Many waiting shoppers, written straight into the database through the service's own
row builder (the API would take minutes for thousands)."""

from __future__ import annotations

import uuid

from backinstock import db
from backinstock.contacts import Channel
from backinstock.identity import NormalizedContact
from backinstock.runtime import Runtime
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from backinstock.subscriptions.statements import INSERT_SUBSCRIPTION
from tests.helpers import phone


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
    async with db.transaction(runtime.sessions) as session:
        for i in range(n):
            contact = NormalizedContact(channel, contact_for(channel, i))
            payload = SubscriptionCreate(sku=sku, channel=channel, contact=contact.value)
            index = runtime.keys.blind_index.digest(contact.index_form)
            row = _NewSubscription.build(runtime.keys, payload, contact, index)
            await session.execute(INSERT_SUBSCRIPTION, row.params)
            ids.append(row.id)
    return ids
