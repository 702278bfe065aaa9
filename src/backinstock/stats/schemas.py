"""The figures' JSON: what a marketer's tools and the dashboard's charts read."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel, Field


class Metric(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    NOTIFIED = "notified"
    DELIVERED = "delivered"
    FAILED = "failed"
    CLICKED = "clicked"
    CONVERTED = "converted"
    REVENUE = "revenue"
    COUPONS_ISSUED = "coupons_issued"
    COUPONS_REDEEMED = "coupons_redeemed"
    COMPENSATIONS_SENT = "compensations_sent"
    HOLDS_PLACED = "holds_placed"
    HOLDS_CONSUMED = "holds_consumed"
    HOLDS_EXPIRED = "holds_expired"
    SUBSTITUTE_MESSAGES_SENT = "substitute_messages_sent"
    SUBSTITUTE_CLICKS = "substitute_clicks"
    SAVED_BY_SUBSTITUTE = "saved_by_substitute"


class Interval(enum.StrEnum):
    DAY = "day"
    HOUR = "hour"


class Format(enum.StrEnum):
    JSON = "json"
    CSV = "csv"


class Funnel(BaseModel):
    subscribed: int = Field(
        description="Subscriptions created in the period (pending requests, not yet confirmed "
        "by their shopper, excluded)."
    )
    waiting: int = Field(
        description="Of the subscriptions created in the period, those still in the queue now "
        "(status waiting or notified)."
    )
    notified: int = Field(
        description="Restock messages sent (status sent) with sent_at in the period."
    )
    delivered: int = Field(
        description="Of the notified, those not reported undelivered: SMS carries delivery "
        "reports; email and WeChat count once the provider accepted them."
    )
    failed: int = Field(
        description="Restock messages that failed (by created_at in the period) plus sent ones "
        "later reported undelivered or failed (by sent_at in the period)."
    )
    clicked: int = Field(description="Of the notified, those whose tracked link was followed.")
    converted: int = Field(
        description="Distinct subscriptions with a conversion (converted_at in the period)."
    )
    revenue: str = Field(
        description="Revenue of those conversions in `currency`, two decimal places.",
        examples=["297.00"],
    )
    currency: str | None = Field(
        description="ISO 4217: the one asked for, else the one with the most revenue in the "
        "period; null when there was none."
    )
    revenue_by_currency: dict[str, str] = Field(
        description="Revenue in every currency seen in the period.",
        examples=[{"CNY": "297.00", "USD": "12.50"}],
    )
    coupons_issued: int = Field(description="Coupons with issued_at in the period.")
    coupons_redeemed: int = Field(description="Coupons with redeemed_at in the period.")
    compensations_sent: int = Field(
        description='"Sold out again" messages (SOLDOUT_COMPENSATION) sent with sent_at in '
        "the period; the coupons they carry count in coupons_issued."
    )
    holds_placed: int = Field(
        description="Units held for told shoppers (HOLD_SECONDS), by when their restock message "
        "was planned (its created_at) in the period: one per message."
    )
    holds_consumed: int = Field(
        description="Of those holds, the ones an order carrying the shopper's token consumed."
    )
    holds_expired: int = Field(
        description="Of those holds, the ones whose time ran out unused: their units went to "
        "the next shoppers at once. The rest are still held, or ended by a sell-out."
    )
    substitute_messages_sent: int = Field(
        description="Substitute messages (SUBSTITUTE_AFTER_SECONDS) sent with sent_at in the "
        "period, narrowed by the SKU waited for."
    )
    substitute_clicks: int = Field(
        description="Substitutes offered in those messages whose own link was first followed "
        "in the period."
    )
    saved_by_substitute: int = Field(
        description="Order lines, by the order's occurred_at in the period, of a substitute "
        "that a substitute message offered the shopper whose token the order carried "
        "(narrowed by the SKU waited for); not conversions."
    )
    click_rate: float = Field(description="clicked / notified, 4 places; 0.0 when none notified.")
    conversion_rate: float = Field(
        description="converted / notified, 4 places; 0.0 when none notified."
    )
    median_seconds_restock_to_send: float | None = Field(
        description="Median of sent_at - created_at over the notified messages, in seconds "
        "(created_at: when the wave step that chose the shopper ran); null when none."
    )
    since: datetime | None = Field(description="Start of the period (inclusive); null: all time.")
    until: datetime = Field(description="End of the period (exclusive); now unless given.")


class DemandItem(BaseModel):
    sku: str
    product_name: str | None
    waiting: int = Field(description="Subscriptions in the queue (waiting or notified).")
    oldest_waiting_since: datetime = Field(
        description="created_at of the oldest subscription in the queue."
    )
    restocks: int = Field(description="Waves opened for the SKU, ever.")
    last_restock_at: datetime | None = Field(description="When the latest wave opened.")
    segment: str | None = Field(
        default=None,
        description="With `group_by=segment`: the segment of the row's shoppers (null: "
        "those without one); absent otherwise.",
    )


class DemandPage(BaseModel):
    items: list[DemandItem]
    next_cursor: str | None


class Point(BaseModel):
    t: datetime = Field(description="Start of the bucket, UTC.")
    value: int | str = Field(description="A count, or for revenue a decimal string.")


class SeriesGroup(BaseModel):
    segment: str | None = Field(description="The segment; null for subscriptions without one.")
    points: list[Point]


class Series(BaseModel):
    metric: Metric
    interval: Interval
    since: datetime
    until: datetime
    currency: str | None = Field(
        default=None,
        description="Revenue only: the ISO 4217 currency of the values; absent when none was seen.",
    )
    points: list[Point]
    groups: list[SeriesGroup] | None = Field(
        default=None,
        description="With `group_by=segment`: the same series per segment of the counted "
        "rows' subscriptions (`segment` null: those without one), no segment first, then by "
        "name, at most 50; each zero-filled like `points`. Absent otherwise.",
    )


class SegmentFigures(BaseModel):
    """The funnel's shopper and message figures for the subscriptions of one segment."""

    segment: str | None = Field(
        description="The subscriptions' `segment` attribute; null: those without one."
    )
    subscribed: int = Field(description="As the funnel's, for this segment.")
    waiting: int = Field(description="As the funnel's, for this segment.")
    notified: int = Field(description="As the funnel's, for this segment.")
    delivered: int = Field(description="As the funnel's, for this segment.")
    clicked: int = Field(description="As the funnel's, for this segment.")
    converted: int = Field(description="As the funnel's, for this segment.")
    revenue: str = Field(
        description="Revenue of the segment's conversions in `currency`, two decimal places.",
        examples=["297.00"],
    )
    currency: str | None = Field(
        description="ISO 4217, the same for every row: the one asked for, else the one with "
        "the most revenue over all segments in the period; null when there was none."
    )
    click_rate: float = Field(description="clicked / notified, 4 places; 0.0 when none notified.")
    conversion_rate: float = Field(
        description="converted / notified, 4 places; 0.0 when none notified."
    )


class SegmentPage(BaseModel):
    items: list[SegmentFigures]
    next_cursor: str | None
