"""The funnel per segment: one row per value of the subscriptions' ``segment`` attribute
(and one for those without), a page at a time.

The page's segments come from ``subscriptions`` (every message and conversion belongs to a
subscription), in order, the row without a segment first; then each figure is one grouped
statement over its own table joined to the subscription, for that page's segments only.
The predicates are the funnel's, so a row counts what the funnel narrowed by
``segment=`` counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import cursors
from backinstock.conversions.models import Conversion
from backinstock.dispatch.models import Notification
from backinstock.money import money
from backinstock.stats import service
from backinstock.stats.filters import Filters, segment_key
from backinstock.stats.schemas import SegmentFigures, SegmentPage
from backinstock.subscriptions.attributes import is_segment
from backinstock.subscriptions.models import IN_QUEUE, Subscription
from backinstock.subscriptions.models import Status as SubscriptionStatus

NONE = ""  # how segment_key() groups the subscriptions without a segment


Counts = dict[str, tuple[Any, ...]]


async def breakdown(
    session: AsyncSession, f: Filters, currency: str | None, limit: int, cursor: str | None
) -> SegmentPage:
    keys = await _page_keys(session, f, limit, decode_cursor(cursor) if cursor else None)
    page = keys[:limit]
    chosen = currency or service.pick_currency(await service.revenue_by_currency(session, f))
    subscribed = await _subscriptions(session, f, page)
    messages = await _messages(session, f, page)
    converted = await _conversions(session, f, page, chosen)
    items = [
        _figures(key, subscribed.get(key), messages.get(key), converted.get(key), chosen)
        for key in page
    ]
    more = len(keys) > limit
    return SegmentPage(items=items, next_cursor=cursors.encode_json([page[-1]]) if more else None)


async def _page_keys(session: AsyncSession, f: Filters, limit: int, after: str | None) -> list[str]:
    s = Subscription
    query = (
        select(segment_key())
        .where(*f.narrow(s.sku, s.channel, s.id), s.status != SubscriptionStatus.PENDING)
        .group_by(segment_key())
        .order_by(segment_key())
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(segment_key() > after)
    return [str(key) for key in await session.scalars(query)]


async def _grouped(session: AsyncSession, query: Any) -> Counts:
    return {str(row[0]): tuple(row[1:]) for row in (await session.execute(query)).all()}


async def _subscriptions(session: AsyncSession, f: Filters, page: Sequence[str]) -> Counts:
    s = Subscription
    query = (
        select(segment_key(), func.count(), func.count().filter(s.status.in_(IN_QUEUE)))
        .where(
            *f.period(s.created_at),
            *f.narrow(s.sku, s.channel, s.id),
            s.status != SubscriptionStatus.PENDING,
            segment_key().in_(page),
        )
        .group_by(segment_key())
    )
    return await _grouped(session, query)


async def _messages(session: AsyncSession, f: Filters, page: Sequence[str]) -> Counts:
    n = Notification
    query = (
        select(
            segment_key(),
            func.count(),
            func.count().filter(service.delivered()),
            func.count().filter(n.clicked_at.is_not(None)),
        )
        .join(Subscription, Subscription.id == n.subscription_id)
        .where(*service.restock_messages(f), service.sent_in_period(f), segment_key().in_(page))
        .group_by(segment_key())
    )
    return await _grouped(session, query)


async def _conversions(
    session: AsyncSession, f: Filters, page: Sequence[str], currency: str | None
) -> Counts:
    c = Conversion
    in_currency = func.sum(c.revenue).filter(c.currency == currency)
    query = (
        select(segment_key(), func.count(c.subscription_id.distinct()), in_currency)
        .join(Subscription, Subscription.id == c.subscription_id)
        .where(
            *f.period(c.converted_at),
            *f.narrow(c.sku, c.channel, c.subscription_id),
            segment_key().in_(page),
        )
        .group_by(segment_key())
    )
    return await _grouped(session, query)


def _figures(
    key: str,
    subscribed: tuple[Any, ...] | None,
    messages: tuple[Any, ...] | None,
    converted: tuple[Any, ...] | None,
    currency: str | None,
) -> SegmentFigures:
    created, waiting = (int(v) for v in subscribed or (0, 0))
    notified, delivered, clicked = (int(v) for v in messages or (0, 0, 0))
    conversions, revenue = converted or (0, None)
    return SegmentFigures(
        segment=key or None,
        subscribed=created,
        waiting=waiting,
        notified=notified,
        delivered=delivered,
        clicked=clicked,
        converted=int(conversions),
        revenue=money(revenue if currency else None),
        currency=currency,
        click_rate=service.rate(clicked, notified),
        conversion_rate=service.rate(int(conversions), notified),
    )


def decode_cursor(cursor: str) -> str:
    try:
        [key] = cursors.decode_json(cursor)
    except (ValueError, TypeError):
        raise cursors.invalid() from None
    # As strict as the value it stands for: a forged one must not reach the database.
    if not (isinstance(key, str) and (key == NONE or is_segment(key))):
        raise cursors.invalid()
    return key
