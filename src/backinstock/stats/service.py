"""The funnel and the demand ranking, aggregated in the database.

Every figure is one pass of conditional aggregates (``count(*) FILTER (WHERE ...)``) over
its own table, narrowed by the indexes on the timestamp it is counted by; no row comes back
to Python. The same statements run on PostgreSQL and SQLite (3.30+ knows FILTER); only the
median differs (PostgreSQL's ``percentile_cont``, SQLite's ORDER BY/OFFSET).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import cursors
from backinstock.catalog.models import Product
from backinstock.conversions.models import Conversion, SubstituteSale
from backinstock.coupons.models import Coupon
from backinstock.db import dialect_name
from backinstock.dispatch.models import DeliveryReport, Kind, Notification, Status, SubstituteOffer
from backinstock.money import money
from backinstock.restocks.models import HoldState, StockHold, Wave
from backinstock.stats.filters import Filters, segment_key
from backinstock.stats.schemas import DemandItem, DemandPage, Funnel
from backinstock.subscriptions.attributes import is_segment
from backinstock.subscriptions.models import IN_QUEUE, Subscription
from backinstock.subscriptions.models import Status as SubscriptionStatus

# Reported by the provider after it had accepted the message.
REPORTED_UNDELIVERED = (DeliveryReport.UNDELIVERED.value, DeliveryReport.FAILED.value)
_SKU = re.compile(r"[!-~]{1,128}")


@dataclass(frozen=True)
class _Messages:
    notified: int
    delivered: int
    failed: int
    clicked: int
    median_seconds: float | None


# ---------------------------------------------------------------- message predicates


def sent_in_period(f: Filters) -> ColumnElement[bool]:
    return and_(Notification.status == Status.SENT, *f.period(Notification.sent_at))


def failed_in_period(f: Filters) -> ColumnElement[bool]:
    """Never sent (by created_at), or sent and then reported undelivered (by sent_at)."""
    never_sent = and_(Notification.status == Status.FAILED, *f.period(Notification.created_at))
    undelivered = and_(sent_in_period(f), Notification.delivery_status.in_(REPORTED_UNDELIVERED))
    return or_(never_sent, undelivered)


def delivered() -> ColumnElement[bool]:
    # Email and WeChat have no delivery reports: accepted by the provider counts.
    reported = Notification.delivery_status
    return or_(reported.is_(None), reported == DeliveryReport.DELIVERED)


def restock_messages(f: Filters) -> list[ColumnElement[bool]]:
    return [
        Notification.kind == Kind.RESTOCK,
        *f.narrow(Notification.sku, Notification.channel, Notification.subscription_id),
    ]


def compensation_messages(f: Filters) -> list[ColumnElement[bool]]:
    return [
        Notification.kind == Kind.COMPENSATION,
        *f.narrow(Notification.sku, Notification.channel, Notification.subscription_id),
    ]


def placed_holds(f: Filters) -> list[ColumnElement[bool]]:
    """Holds by their restock message (its time, SKU and channel): the join is in the WHERE,
    so that the time series can group the same clauses by the message's time."""
    n = Notification
    return [
        StockHold.notification_id == n.id,
        *f.period(n.created_at),
        *f.narrow(n.sku, n.channel, n.subscription_id),
    ]


def substitute_messages(f: Filters) -> list[ColumnElement[bool]]:
    return [
        Notification.kind == Kind.SUBSTITUTE,
        *f.narrow(Notification.sku, Notification.channel, Notification.subscription_id),
    ]


def substitute_clicks(f: Filters) -> list[ColumnElement[bool]]:
    """Offers first clicked in the period, of messages narrowed by the SKU waited for."""
    return [
        SubstituteOffer.notification_id == Notification.id,
        *substitute_messages(f),
        *f.period(SubstituteOffer.clicked_at),
    ]


def saved_by_substitute(f: Filters) -> list[ColumnElement[bool]]:
    return [
        *f.period(SubstituteSale.saved_at),
        *f.narrow(SubstituteSale.sku, SubstituteSale.channel, SubstituteSale.subscription_id),
    ]


def seconds_to_send(session: AsyncSession) -> ColumnElement[Any]:
    if dialect_name(session) == "postgresql":
        # date_part gives a float8; extract() gives a numeric since PostgreSQL 14, and sorting
        # a million numerics for the median took half again as long (bench/funnel.py).
        epoch: ColumnElement[str] = literal_column("'epoch'")
        return func.date_part(epoch, Notification.sent_at - Notification.created_at)
    # SQLite keeps UTC timestamps as text; julianday reads them (to ~50 microseconds).
    days = func.julianday(Notification.sent_at) - func.julianday(Notification.created_at)
    return days * 86400.0


# ---------------------------------------------------------------- funnel


async def funnel(session: AsyncSession, f: Filters, currency: str | None) -> Funnel:
    subscribed, waiting = await _subscriptions(session, f)
    messages = await _messages(session, f)
    converted = await _converted(session, f)
    by_currency = await revenue_by_currency(session, f)
    chosen = currency or pick_currency(by_currency)
    issued, redeemed = await _coupons(session, f)
    holds = await _holds(session, f)
    return Funnel(
        subscribed=subscribed,
        waiting=waiting,
        notified=messages.notified,
        delivered=messages.delivered,
        failed=messages.failed,
        clicked=messages.clicked,
        converted=converted,
        revenue=money(by_currency.get(chosen) if chosen else None),
        currency=chosen,
        revenue_by_currency={code: money(amount) for code, amount in by_currency.items()},
        coupons_issued=issued,
        coupons_redeemed=redeemed,
        compensations_sent=await _compensations_sent(session, f),
        holds_placed=holds.placed,
        holds_consumed=holds.consumed,
        holds_expired=holds.expired,
        **await _substitutes(session, f),
        click_rate=rate(messages.clicked, messages.notified),
        conversion_rate=rate(converted, messages.notified),
        median_seconds_restock_to_send=messages.median_seconds,
        since=f.since,
        until=f.until,
    )


def rate(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


async def _subscriptions(session: AsyncSession, f: Filters) -> tuple[int, int]:
    s = Subscription
    # A pending request (double opt-in) is not a subscription until its shopper confirms.
    row = (
        await session.execute(
            select(func.count(), func.count().filter(s.status.in_(IN_QUEUE))).where(
                *f.period(s.created_at),
                *f.narrow(s.sku, s.channel, s.id),
                s.status != SubscriptionStatus.PENDING,
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def _messages(session: AsyncSession, f: Filters) -> _Messages:
    n, sent = Notification, sent_in_period(f)
    columns: list[ColumnElement[Any]] = [
        func.count().filter(sent),
        func.count().filter(and_(sent, delivered())),
        func.count().filter(failed_in_period(f)),
        func.count().filter(and_(sent, n.clicked_at.is_not(None))),
    ]
    postgres = dialect_name(session) == "postgresql"
    if postgres:
        median = func.percentile_cont(0.5).within_group(seconds_to_send(session)).filter(sent)
        columns.append(median)
    query = select(*columns).where(*restock_messages(f), or_(sent, failed_in_period(f)))
    row = (await session.execute(query)).one()
    notified = int(row[0])
    if postgres:
        median_seconds = None if row[4] is None else float(row[4])
    else:
        median_seconds = await _median_by_offset(session, f, notified)
    return _Messages(
        notified=notified,
        delivered=int(row[1]),
        failed=int(row[2]),
        clicked=int(row[3]),
        median_seconds=None if median_seconds is None else round(median_seconds, 3),
    )


async def _compensations_sent(session: AsyncSession, f: Filters) -> int:
    query = select(func.count()).where(*compensation_messages(f), sent_in_period(f))
    return int(await session.scalar(query) or 0)


@dataclass(frozen=True)
class _Holds:
    placed: int
    consumed: int
    expired: int


async def _holds(session: AsyncSession, f: Filters) -> _Holds:
    state = StockHold.state
    query = select(
        func.count(),
        func.count().filter(state == HoldState.CONSUMED),
        func.count().filter(state == HoldState.RELEASED),
    ).where(*placed_holds(f))
    row = (await session.execute(query)).one()
    return _Holds(int(row[0]), int(row[1]), int(row[2]))


async def _substitutes(session: AsyncSession, f: Filters) -> dict[str, int]:
    """The substitute offers' steps: messages sent, substitutes clicked, orders saved."""
    sent = select(func.count()).where(*substitute_messages(f), sent_in_period(f))
    clicks = select(func.count()).where(*substitute_clicks(f))
    saved = select(func.count()).where(*saved_by_substitute(f))
    return {
        "substitute_messages_sent": int(await session.scalar(sent) or 0),
        "substitute_clicks": int(await session.scalar(clicks) or 0),
        "saved_by_substitute": int(await session.scalar(saved) or 0),
    }


async def _median_by_offset(session: AsyncSession, f: Filters, count: int) -> float | None:
    """The middle one (odd count) or the mean of the middle two (even), as percentile_cont."""
    if count == 0:
        return None
    seconds = seconds_to_send(session).label("seconds")
    middle = (
        select(seconds)
        .where(*restock_messages(f), sent_in_period(f))
        .order_by(seconds)
        .limit(2 - count % 2)
        .offset((count - 1) // 2)
        .subquery()
    )
    value = await session.scalar(select(func.avg(middle.c.seconds)))
    return None if value is None else float(value)


async def _converted(session: AsyncSession, f: Filters) -> int:
    c = Conversion
    query = select(func.count(c.subscription_id.distinct())).where(
        *f.period(c.converted_at), *f.narrow(c.sku, c.channel, c.subscription_id)
    )
    return int(await session.scalar(query) or 0)


async def revenue_by_currency(session: AsyncSession, f: Filters) -> dict[str, Decimal]:
    c = Conversion
    query = (
        select(c.currency, func.sum(c.revenue))
        .where(*f.period(c.converted_at), *f.narrow(c.sku, c.channel, c.subscription_id))
        .group_by(c.currency)
        .order_by(c.currency)
    )
    return {code: amount for code, amount in (await session.execute(query)).all()}


def pick_currency(by_currency: dict[str, Decimal]) -> str | None:
    """The currency with the most revenue (ties: the first in alphabetical order)."""
    if not by_currency:
        return None
    return min(by_currency, key=lambda code: (-by_currency[code], code))


async def _coupons(session: AsyncSession, f: Filters) -> tuple[int, int]:
    c = Coupon
    issued, redeemed = and_(*f.period(c.issued_at)), and_(*f.period(c.redeemed_at))
    query = select(func.count().filter(issued), func.count().filter(redeemed)).where(
        or_(issued, redeemed), *f.narrow(c.sku, c.channel, c.subscription_id)
    )
    row = (await session.execute(query)).one()
    return int(row[0]), int(row[1])


# ---------------------------------------------------------------- demand


async def demand(
    session: AsyncSession,
    limit: int,
    cursor: str | None,
    segment: str | None = None,
    by_segment: bool = False,
) -> DemandPage:
    """SKUs with shoppers in the queue (of ``segment`` when given), most waiting first (then
    by SKU), a page at a time; ``by_segment``: a row per SKU and segment of its shoppers."""
    s = Subscription
    in_segment = [s.segment == segment] if segment is not None else []
    key = segment_key() if by_segment else literal_column("''")
    grouping = (s.sku, key) if by_segment else (s.sku,)
    queued = (
        select(
            s.sku.label("sku"),
            key.label("segment"),
            func.count().label("waiting"),
            func.min(s.created_at).label("oldest"),
        )
        .where(s.status.in_(IN_QUEUE), *in_segment)
        .group_by(*grouping)
        .subquery()
    )
    order = (queued.c.waiting.desc(), queued.c.sku, queued.c.segment)
    page_query = select(queued).order_by(*order).limit(limit + 1)
    if cursor:
        waiting, sku, after_segment = decode_cursor(cursor)
        page_query = page_query.where(
            or_(
                queued.c.waiting < waiting,
                and_(queued.c.waiting == waiting, queued.c.sku > sku),
                and_(
                    queued.c.waiting == waiting,
                    queued.c.sku == sku,
                    queued.c.segment > after_segment,
                ),
            )
        )
    page = page_query.subquery()
    # Waves and names are looked up for the page's SKUs only, not for every SKU in the queue.
    restocks = select(func.count()).where(Wave.sku == page.c.sku).scalar_subquery()
    last_restock = select(func.max(Wave.opened_at)).where(Wave.sku == page.c.sku).scalar_subquery()
    query = (
        select(page, Product.name, restocks, last_restock)
        .outerjoin(Product, Product.sku == page.c.sku)
        .order_by(page.c.waiting.desc(), page.c.sku, page.c.segment)
    )
    rows = (await session.execute(query)).all()
    items = [_demand_item(row, by_segment) for row in rows[:limit]]
    more = len(rows) > limit
    return DemandPage(items=items, next_cursor=encode_cursor(items[-1]) if more else None)


def _demand_item(row: Any, by_segment: bool) -> DemandItem:
    sku, segment, waiting, oldest, name, restocks, last_restock = row
    values = {
        "sku": sku,
        "waiting": int(waiting),
        "oldest_waiting_since": oldest,
        "product_name": name,
        "restocks": int(restocks),
        "last_restock_at": last_restock,
    }
    if by_segment:  # absent from the answer otherwise (unset)
        values["segment"] = segment or None
    return DemandItem(**values)


def encode_cursor(last: DemandItem) -> str:
    return cursors.encode_json([last.waiting, last.sku, last.segment or ""])


def decode_cursor(cursor: str) -> tuple[int, str, str]:
    """(waiting, sku, segment: '' for none) of the last row of the page before; a cursor
    made before rows had segments has two parts."""
    try:
        waiting, sku, *rest = cursors.decode_json(cursor)
    except (ValueError, TypeError):
        raise cursors.invalid() from None
    segment = rest[0] if len(rest) == 1 else "" if not rest else None
    # Checked as strictly as the values it stands for: a forged one must not reach the database.
    if not (isinstance(waiting, int) and 0 < waiting < 2**63):
        raise cursors.invalid()
    if not (isinstance(sku, str) and _SKU.fullmatch(sku)):
        raise cursors.invalid()
    if not (segment == "" or (isinstance(segment, str) and is_segment(segment))):
        raise cursors.invalid()
    return waiting, sku, segment
