"""GET /v1/stats/funnel, /demand, /timeseries and /segments: JSON, or CSV on request."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from backinstock.contacts import Channel
from backinstock.dashboard.deps import StatsReader
from backinstock.deps import RuntimeDep, SessionDep
from backinstock.errors import InvalidField, error_responses
from backinstock.fields import DIGITS, INSTANT_RULE, Instant
from backinstock.stats import csv_export, segments, series, service
from backinstock.stats.filters import Filters
from backinstock.stats.schemas import (
    DemandItem,
    DemandPage,
    Format,
    Funnel,
    Interval,
    Metric,
    SegmentFigures,
    SegmentPage,
    Series,
)
from backinstock.subscriptions.attributes import SEGMENT_PATTERN

router = APIRouter(tags=["figures"])

SkuQuery = Annotated[
    str | None,
    Query(min_length=1, max_length=128, pattern=r"^[!-~]+$", description="Only this SKU."),
]
ChannelQuery = Annotated[Channel | None, Query(description="Only this channel.")]
SegmentQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=SEGMENT_PATTERN,
        description="Only the subscriptions whose `segment` attribute is this (their "
        "messages, conversions and coupons too).",
    ),
]
SinceQuery = Annotated[
    Instant | None, Query(description="Start of the period, inclusive. " + INSTANT_RULE)
]
UntilQuery = Annotated[
    Instant | None,
    Query(description="End of the period, exclusive; default now. " + INSTANT_RULE),
]
CurrencyQuery = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of the revenue; default the one with the most revenue.",
    ),
]


class GroupBy(enum.StrEnum):
    SEGMENT = "segment"


GroupByQuery = Annotated[
    GroupBy | None,
    Query(
        description="`segment`: the figures per segment of the subscriptions they belong to "
        "as well (no segment as null), beside the total."
    ),
]
FormatQuery = Annotated[
    Format | None,
    Query(alias="format", description="`csv` for CSV; the same as `Accept: text/csv`."),
]

FUNNEL_CSV = (
    "subscribed,waiting,notified,delivered,failed,clicked,converted,revenue,currency,"
    "coupons_issued,coupons_redeemed,compensations_sent,holds_placed,holds_consumed,"
    "holds_expired,substitute_messages_sent,substitute_clicks,saved_by_substitute,"
    "click_rate,conversion_rate,median_seconds_restock_to_send,since,until\r\n"
    "120,80,100,97,3,41,12,1188.00,CNY,30,4,15,100,9,60,20,7,2,0.41,0.12,2.35,"
    "2026-11-01T00:00:00Z,"
    "2026-11-22T00:00:00Z\r\n"
)
DEMAND_CSV = """sku,product_name,waiting,oldest_waiting_since,restocks,last_restock_at\r
TSHIRT-RED-M,红色T恤 M,312,2026-10-02T08:14:03Z,2,2026-11-21T10:00:00Z\r
"""
SERIES_CSV = """t,value\r
2026-11-21T00:00:00Z,12\r
2026-11-22T00:00:00Z,0\r
"""
FUNNEL_DOC = """The marketer's funnel. Every figure counts by its own timestamp in `[since, until)`
(`since` absent: all time; `until` absent: now); `sku`, `channel` and `segment` narrow
every figure (`segment`: the subscriptions with that `segment` attribute, and their
messages, conversions and coupons; per segment side by side: `GET /v1/stats/segments`).

- `subscribed`: subscriptions created in the period; `waiting`: of those, the ones still
  in the queue now (waiting or notified).
- `notified`: restock messages sent, by `sent_at`; `delivered`: of those, the ones with no
  negative delivery report (SMS has delivery reports; email and WeChat count as delivered
  once the provider accepted them); `clicked`: of those, the ones whose link was followed.
- `failed`: restock messages that failed (by `created_at`) plus sent ones later reported
  undelivered or failed (by `sent_at`).
- `converted`: distinct subscriptions with a conversion, by `converted_at`; `revenue`: the
  sum of those conversions in `currency` (the `currency` asked for, else the one with the
  most revenue; null when none); `revenue_by_currency` has every currency.
- `coupons_issued` / `coupons_redeemed`: coupons by `issued_at` / `redeemed_at` (those of
  follow-ups and of sold-out compensations alike).
- `compensations_sent`: "sold out again" messages (`SOLDOUT_COMPENSATION`) sent, by
  `sent_at`; not part of `notified` or its rates.
- `holds_placed`: units held for told shoppers (`HOLD_SECONDS`), one per restock message,
  by the message's `created_at` (when its wave step planned it); `holds_consumed` /
  `holds_expired`: of those, the ones an order with the shopper's token consumed / whose
  time ran out unused (their units went on to the next shoppers at once). The rest are
  still held or were ended by a sell-out.
- `substitute_messages_sent`: substitute messages (`SUBSTITUTE_AFTER_SECONDS`) sent, by
  `sent_at`; `substitute_clicks`: substitutes those messages offered whose own link was
  followed, by the first click; `saved_by_substitute`: order lines of an offered
  substitute whose order carried the message's token, by the order's `occurred_at`. All
  three are narrowed by the SKU waited for, and none is part of `notified`, `converted` or
  their rates.
- `click_rate` = clicked / notified, `conversion_rate` = converted / notified (4 places,
  0.0 when nothing was notified).
- `median_seconds_restock_to_send`: median of `sent_at - created_at` over the notified
  messages (`created_at` is when the wave step that chose the shopper ran: the restock
  webhook for a wave's first step); null when none.

CSV (`Accept: text/csv` or `?format=csv`): a header row and one row."""


def wants_csv(request: Request, fmt: Format | None) -> bool:
    if fmt is not None:
        return fmt is Format.CSV
    return "text/csv" in request.headers.get("accept", "")


def period_filters(
    runtime: RuntimeDep,
    sku: SkuQuery = None,
    channel: ChannelQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    segment: SegmentQuery = None,
) -> Filters:
    end = until or runtime.clock.now()
    start = since
    if start is not None and start >= end:
        raise InvalidField("since", "must be before until")
    return Filters(
        until=end,
        since=start,
        sku=sku,
        channel=channel.value if channel else None,
        segment=segment,
    )


FiltersDep = Annotated[Filters, Depends(period_filters)]


@router.get(
    "/v1/stats/funnel",
    operation_id="getFunnel",
    response_model=Funnel,
    description=FUNNEL_DOC,
    responses={**csv_export.openapi(FUNNEL_CSV), **error_responses(401, 403, 422)},
)
async def get_funnel(
    request: Request,
    session: SessionDep,
    _: StatsReader,
    filters: FiltersDep,
    currency: CurrencyQuery = None,
    fmt: FormatQuery = None,
) -> Funnel | Response:
    funnel = await service.funnel(session, filters, currency)
    if not wants_csv(request, fmt):
        return funnel
    values = funnel.model_dump()
    values["revenue"] = Decimal(funnel.revenue)  # a number, not text, in a spreadsheet
    header = [name for name in Funnel.model_fields if name != "revenue_by_currency"]
    return csv_export.response("funnel", header, [[values[name] for name in header]])


@router.get(
    "/v1/stats/demand",
    operation_id="getDemand",
    response_model=DemandPage,
    response_model_exclude_unset=True,
    responses={**csv_export.openapi(DEMAND_CSV), **error_responses(401, 403, 422)},
)
async def get_demand(
    request: Request,
    session: SessionDep,
    _: StatsReader,
    limit: Annotated[int, Query(ge=1, le=1000), DIGITS] = 100,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    segment: SegmentQuery = None,
    group_by: GroupByQuery = None,
    fmt: FormatQuery = None,
) -> DemandPage | Response:
    """SKUs with at least one shopper in the queue (waiting or notified), most waiting first,
    then by SKU. `restocks` counts the waves ever opened for the SKU. With `segment`, only
    that segment's shoppers count (a cursor belongs to the segment it was made with). With
    `group_by=segment`, a row per SKU and segment of its shoppers, with `segment` (null:
    shoppers without one), ranked the same way (then by segment).

    CSV: one row per SKU of this page; the next page's cursor is in the `X-Next-Cursor`
    header and as a `Link: <...>; rel="next"` URL (both absent on the last page)."""
    grouped = group_by is GroupBy.SEGMENT
    page = await service.demand(session, limit, cursor, segment, grouped)
    if not wants_csv(request, fmt):
        return page
    header = [name for name in DemandItem.model_fields if grouped or name != "segment"]
    rows = [[getattr(item, name) for name in header] for item in page.items]
    headers = {}
    if page.next_cursor:
        next_url = request.url.include_query_params(cursor=page.next_cursor)
        headers = {"X-Next-Cursor": page.next_cursor, "Link": f'<{next_url}>; rel="next"'}
    return csv_export.response("demand", header, rows, headers)


@router.get(
    "/v1/stats/timeseries",
    operation_id="getTimeseries",
    response_model=Series,
    response_model_exclude_none=True,
    responses={**csv_export.openapi(SERIES_CSV), **error_responses(401, 403, 422)},
)
async def get_timeseries(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    _: StatsReader,
    metric: Metric,
    interval: Interval = Interval.DAY,
    sku: SkuQuery = None,
    channel: ChannelQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    segment: SegmentQuery = None,
    group_by: GroupByQuery = None,
    currency: CurrencyQuery = None,
    fmt: FormatQuery = None,
) -> Series | Response:
    """One funnel figure per UTC day or hour over `[since, until)`, zero-filled and in order;
    each point counts what the funnel counts for its bucket, so the points add up to the
    funnel over the same period (the first and last buckets may be partial). Defaults:
    `until` now, `since` 30 days (day) or 48 hours (hour) before it; at most 2000 buckets.
    `revenue` values are decimal strings in `currency` (as in the funnel).

    CSV: `t,value` rows."""
    end = until or runtime.clock.now()
    start = since or end - series.DEFAULT_SPAN[interval]
    filters = period_filters(runtime, sku, channel, start, end, segment)
    grouped = group_by is GroupBy.SEGMENT
    result = await series.timeseries(session, metric, interval, filters, currency, grouped)
    if not wants_csv(request, fmt):
        return _series_json(result)
    if result.groups is not None:
        rows = [
            [point.t, group.segment or "", _series_cell(point.value)]
            for group in result.groups
            for point in group.points
        ]
        return csv_export.response(f"timeseries-{metric.value}", ["t", "segment", "value"], rows)
    rows = [[point.t, _series_cell(point.value)] for point in result.points]
    return csv_export.response(f"timeseries-{metric.value}", ["t", "value"], rows)


def _series_json(result: Series) -> Response:
    """Absent `currency` and `groups` are left out, but a group's null `segment` (shoppers
    without one) is kept: `segment` means the same in every figure."""
    body = result.model_dump(mode="json", exclude={"groups"}, exclude_none=True)
    if result.groups is not None:
        body["groups"] = [group.model_dump(mode="json") for group in result.groups]
    return JSONResponse(body)


SEGMENTS_CSV = (
    "segment,subscribed,waiting,notified,delivered,clicked,converted,revenue,currency,"
    "click_rate,conversion_rate\r\n"
    ",80,50,60,58,20,6,594.00,CNY,0.3333,0.1\r\n"
    "sensitive-skin,40,30,40,39,21,6,594.00,CNY,0.525,0.15\r\n"
)


@router.get(
    "/v1/stats/segments",
    operation_id="getSegments",
    response_model=SegmentPage,
    responses={**csv_export.openapi(SEGMENTS_CSV), **error_responses(401, 403, 422)},
)
async def get_segments(
    request: Request,
    session: SessionDep,
    _: StatsReader,
    filters: FiltersDep,
    currency: CurrencyQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000), DIGITS] = 100,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    fmt: FormatQuery = None,
) -> SegmentPage | Response:
    """The funnel grouped by the subscriptions' `segment` attribute: one row per segment
    (`segment` null: the subscriptions without one, first), then by segment name, each
    counted as the funnel with `segment=` counts it (`subscribed`, `waiting`, `notified`,
    `delivered`, `clicked`, `converted`, `revenue`, the rates). Every segment with a
    subscription matching `sku` and `channel` has a row, with zeros when nothing of it falls
    in the period. Revenue is in one `currency` for all rows.

    CSV: one row per segment of this page (an empty `segment` cell: none); the next page's
    cursor is in the `X-Next-Cursor` header and as a `Link: <...>; rel="next"` URL."""
    page = await segments.breakdown(session, filters, currency, limit, cursor)
    if not wants_csv(request, fmt):
        return page
    header = list(SegmentFigures.model_fields)
    rows = [[_segment_cell(item, name) for name in header] for item in page.items]
    headers = {}
    if page.next_cursor:
        next_url = request.url.include_query_params(cursor=page.next_cursor)
        headers = {"X-Next-Cursor": page.next_cursor, "Link": f'<{next_url}>; rel="next"'}
    return csv_export.response("segments", header, rows, headers)


def _segment_cell(item: SegmentFigures, name: str) -> csv_export.Cell:
    value: csv_export.Cell = getattr(item, name)
    # Revenue a number, not text, in a spreadsheet; no segment an empty cell.
    return Decimal(item.revenue) if name == "revenue" else value


def _series_cell(value: int | str) -> int | Decimal:
    return Decimal(value) if isinstance(value, str) else value
