"""A long wait becomes a substitute offer: a shopper who has waited SUBSTITUTE_AFTER_SECONDS
for a SKU that is still sold out, while some of its substitutes are in stock, gets one
message naming those substitutes (each with a tracked link), once per subscription, ever.

The sweeper calls :func:`plan_due` every tick. Products sold out with a substitute in stock
are found first (``restocks.substitutes``: few products keep a list), then each one's
shoppers in its queue who have waited long enough and had no substitute message, in queue
order, at most a batch per tick. The message is an outbox row like any other (kind
``substitute``, in no wave), so it is sent, retried, held in quiet hours, sent to
fallbacks and recovered the same way; what it offers is written with it
(``substitute_offers``), so its links and the orders it saves are known whatever the list
does later. A unique index keeps it to one per subscription even when two workers' sweepers
plan at once. A SKU's ``substitute_after_seconds`` rule overrides the setting for it (0
turns it off for that SKU; above 0 turns it on for that SKU with the setting off).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import structlog
from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.selectable import Subquery

from backinstock import db
from backinstock.catalog import policy as product_policy
from backinstock.config import Settings
from backinstock.dispatch import notifications
from backinstock.dispatch.models import Kind, Notification
from backinstock.restocks import substitutes
from backinstock.subscriptions.models import IN_QUEUE, Subscription

log = structlog.get_logger(__name__)


async def plan_due(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, now: datetime
) -> list[uuid.UUID]:
    """Plan the substitute messages due at ``now``; returns them (none when off)."""
    async with db.transaction(sessions) as session:
        if not await product_policy.substitutes_wanted(session, settings):
            return []
        return await _plan(session, settings, now)


async def _plan(session: AsyncSession, settings: Settings, now: datetime) -> list[uuid.UUID]:
    budget = settings.conversion.followup_batch
    planned: list[uuid.UUID] = []
    skus = await substitutes.sold_out_with_substitutes(session)
    rules = await product_policy.effective_many(session, settings, skus) if skus else {}
    for sku in skus:
        if len(planned) >= budget:
            break
        after = rules[sku].substitute_after_seconds  # the SKU's own wait, else the setting's
        if after == 0:
            continue
        listed = await substitutes.listed_in_stock(session, sku)
        offered = [substitute for substitute, in_stock in listed if in_stock]
        limit = budget - len(planned)
        shoppers = _waited_long_enough(sku, now - timedelta(seconds=after), limit)
        messages = await notifications.plan_substitutes(session, sku, shoppers, limit, offered, now)
        if messages:
            log.info("substitute_offers_planned", sku=sku, messages=len(messages))
        planned += messages
    return planned


def _waited_long_enough(sku: str, waited_since: datetime, limit: int) -> Subquery:
    """The SKU's shoppers in its queue (id, channel, n = 1.. in queue order) waiting since
    ``waited_since`` or before (since they confirmed, for a double opt-in) without a
    substitute message yet; at most ``limit``."""
    s = Subscription
    offered = exists().where(
        Notification.subscription_id == s.id, Notification.kind == Kind.SUBSTITUTE
    )
    order = (s.priority_rank, s.created_at, s.id)
    return (
        select(s.id, s.channel, func.row_number().over(order_by=order).label("n"))
        .where(
            s.sku == sku,
            s.status.in_(IN_QUEUE),
            func.coalesce(s.confirmed_at, s.created_at) <= waited_since,
            ~offered,
        )
        .order_by(*order)
        .limit(limit)
        .subquery("waited")
    )
