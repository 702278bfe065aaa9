"""Time series: one figure of the funnel per UTC day or hour, zero-filled.

Each point counts what the funnel would count for its bucket (the same predicates, on the
same timestamps), so the points of a series add up to the funnel over the same period. The
database groups by bucket (``date_trunc`` on PostgreSQL, ``strftime`` on SQLite); Python only
lays the at most ``MAX_BUCKETS`` sums onto the calendar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.conversions.models import Conversion, SubstituteSale
from backinstock.coupons.models import Coupon
from backinstock.db import dialect_name
from backinstock.dispatch.models import Notification, Status, SubstituteOffer
from backinstock.errors import InvalidField
from backinstock.money import money
from backinstock.restocks.models import HoldState, StockHold
from backinstock.stats import service
from backinstock.stats.filters import Filters, segment_key
from backinstock.stats.schemas import Interval, Metric, Point, Series, SeriesGroup
from backinstock.subscriptions.models import Status as SubscriptionStatus
from backinstock.subscriptions.models import Subscription

MAX_BUCKETS = 2000
STEP = {Interval.DAY: timedelta(days=1), Interval.HOUR: timedelta(hours=1)}
DEFAULT_SPAN = {Interval.DAY: timedelta(days=30), Interval.HOUR: timedelta(hours=48)}
_SQLITE_FORMAT = {Interval.DAY: "%Y-%m-%d 00:00:00", Interval.HOUR: "%Y-%m-%d %H:00:00"}


@dataclass(frozen=True)
class _Source:
    """What a metric counts: the timestamp it is bucketed by, the aggregate, the rows."""

    moment: SQLColumnExpression[Any]
    value: ColumnElement[Any]
    where: list[ColumnElement[bool]]
    # The row's subscription, whose segment groups it (``group_by=segment``).
    subscription: SQLColumnExpression[Any]


def floor(moment: datetime, interval: Interval) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if interval is Interval.DAY else moment


def bucket_starts(since: datetime, until: datetime, interval: Interval) -> list[datetime]:
    """Every bucket that overlaps ``[since, until)``; the first and last may be partial."""
    first, step = floor(since, interval), STEP[interval]
    count = -(-(until - first) // step)  # ceiling division of timedeltas
    if count > MAX_BUCKETS:
        raise InvalidField(
            "since", f"the period spans {count} {interval.value}s; at most {MAX_BUCKETS}"
        )
    return [first + i * step for i in range(count)]


async def timeseries(
    session: AsyncSession,
    metric: Metric,
    interval: Interval,
    f: Filters,
    currency: str | None,
    by_segment: bool = False,
) -> Series:
    """The metric per bucket; ``by_segment``: also per segment of the rows' subscriptions
    (``groups``, no segment first, then by name, at most :data:`MAX_GROUPS`)."""
    assert f.since is not None
    starts = bucket_starts(f.since, f.until, interval)
    chosen = None
    if metric is Metric.REVENUE:
        chosen = currency or service.pick_currency(await service.revenue_by_currency(session, f))
    source = _SOURCES[metric](f, chosen)
    bucket = _bucket(session, source.moment, interval)
    query = select(bucket, source.value).where(*source.where).group_by(bucket)
    sums = {_moment(t): value for t, value in (await session.execute(query)).all()}
    present = money if metric is Metric.REVENUE else _count
    groups = None
    if by_segment:
        by_group = await _by_segment(session, source, bucket)
        groups = [
            SeriesGroup(
                segment=key or None,
                points=[Point(t=t, value=present(sums_of.get(t))) for t in starts],
            )
            for key, sums_of in sorted(by_group.items())[:MAX_GROUPS]
        ]
    return Series(
        metric=metric,
        interval=interval,
        since=f.since,
        until=f.until,
        currency=chosen,
        points=[Point(t=t, value=present(sums.get(t))) for t in starts],
        groups=groups,
    )


async def _by_segment(
    session: AsyncSession, source: _Source, bucket: Any
) -> dict[str, dict[datetime, Any]]:
    """The source's sums per (segment, bucket): its rows joined to their subscription in the
    WHERE (as the funnel's own joins), no segment grouped as ''."""
    key = segment_key()
    query = (
        select(key, bucket, source.value)
        .where(*source.where, Subscription.id == source.subscription)
        .group_by(key, bucket)
    )
    groups: dict[str, dict[datetime, Any]] = {}
    for segment, t, value in (await session.execute(query)).all():
        groups.setdefault(segment, {})[_moment(t)] = value
    return groups


def _count(value: Any) -> int:
    return int(value or 0)


def _bucket(session: AsyncSession, moment: SQLColumnExpression[Any], interval: Interval) -> Any:
    # Literals, not bound parameters: PostgreSQL must see the GROUP BY expression and the
    # selected one as the same expression.
    if dialect_name(session) == "postgresql":
        unit: ColumnElement[str] = literal_column(f"'{interval.value}'")
        return func.date_trunc(unit, moment, literal_column("'UTC'"))
    return func.strftime(literal_column(f"'{_SQLITE_FORMAT[interval]}'"), moment)


def _moment(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite: "2026-11-21 10:00:00"
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# A series grouped by segment carries at most this many groups (no segment first, then by
# name): a chart of more is unreadable, and each is a full series.
MAX_GROUPS = 50


# ---------------------------------------------------------------- metric sources


def _subscribed(f: Filters, _: str | None) -> _Source:
    s = Subscription
    # A pending request (double opt-in) is not a subscription until its shopper confirms.
    where = [
        *f.period(s.created_at),
        *f.narrow(s.sku, s.channel, s.id),
        s.status != SubscriptionStatus.PENDING,
    ]
    return _Source(s.created_at, func.count(), where, s.id)


def _sent(*extra: ColumnElement[bool]) -> Callable[[Filters, str | None], _Source]:
    def source(f: Filters, _: str | None) -> _Source:
        where = [*service.restock_messages(f), service.sent_in_period(f), *extra]
        return _Source(Notification.sent_at, func.count(), where, Notification.subscription_id)

    return source


def _compensations_sent(f: Filters, _: str | None) -> _Source:
    where = [*service.compensation_messages(f), service.sent_in_period(f)]
    return _Source(Notification.sent_at, func.count(), where, Notification.subscription_id)


def _holds(*state: HoldState) -> Callable[[Filters, str | None], _Source]:
    def source(f: Filters, _: str | None) -> _Source:
        where = [*service.placed_holds(f), *(StockHold.state == s for s in state)]
        return _Source(Notification.created_at, func.count(), where, Notification.subscription_id)

    return source


def _substitute_messages_sent(f: Filters, _: str | None) -> _Source:
    where = [*service.substitute_messages(f), service.sent_in_period(f)]
    return _Source(Notification.sent_at, func.count(), where, Notification.subscription_id)


def _substitute_clicks(f: Filters, _: str | None) -> _Source:
    where = service.substitute_clicks(f)
    return _Source(SubstituteOffer.clicked_at, func.count(), where, Notification.subscription_id)


def _saved_by_substitute(f: Filters, _: str | None) -> _Source:
    where = service.saved_by_substitute(f)
    return _Source(SubstituteSale.saved_at, func.count(), where, SubstituteSale.subscription_id)


def _failed(f: Filters, _: str | None) -> _Source:
    # Never-sent failures count when created, undelivered ones when sent (as in the funnel).
    n = Notification
    moment = case((n.status == Status.FAILED, n.created_at), else_=n.sent_at)
    where = [*service.restock_messages(f), service.failed_in_period(f)]
    return _Source(moment, func.count(), where, n.subscription_id)


def _converted(f: Filters, _: str | None) -> _Source:
    c = Conversion
    where = [*f.period(c.converted_at), *f.narrow(c.sku, c.channel, c.subscription_id)]
    return _Source(
        c.converted_at, func.count(c.subscription_id.distinct()), where, c.subscription_id
    )


def _revenue(f: Filters, currency: str | None) -> _Source:
    c = Conversion
    where = [
        *f.period(c.converted_at),
        *f.narrow(c.sku, c.channel, c.subscription_id),
        c.currency == currency,
    ]
    return _Source(c.converted_at, func.sum(c.revenue), where, c.subscription_id)


def _coupons(column: str) -> Callable[[Filters, str | None], _Source]:
    def source(f: Filters, _: str | None) -> _Source:
        moment = getattr(Coupon, column)
        return _Source(
            moment,
            func.count(),
            [*f.period(moment), *f.narrow(Coupon.sku, Coupon.channel, Coupon.subscription_id)],
            Coupon.subscription_id,
        )

    return source


_SOURCES: dict[Metric, Callable[[Filters, str | None], _Source]] = {
    Metric.SUBSCRIBED: _subscribed,
    Metric.NOTIFIED: _sent(),
    Metric.DELIVERED: _sent(service.delivered()),
    Metric.FAILED: _failed,
    Metric.CLICKED: _sent(Notification.clicked_at.is_not(None)),
    Metric.CONVERTED: _converted,
    Metric.REVENUE: _revenue,
    Metric.COUPONS_ISSUED: _coupons("issued_at"),
    Metric.COUPONS_REDEEMED: _coupons("redeemed_at"),
    Metric.COMPENSATIONS_SENT: _compensations_sent,
    Metric.HOLDS_PLACED: _holds(),
    Metric.HOLDS_CONSUMED: _holds(HoldState.CONSUMED),
    Metric.HOLDS_EXPIRED: _holds(HoldState.RELEASED),
    Metric.SUBSTITUTE_MESSAGES_SENT: _substitute_messages_sent,
    Metric.SUBSTITUTE_CLICKS: _substitute_clicks,
    Metric.SAVED_BY_SUBSTITUTE: _saved_by_substitute,
}
