"""Prometheus metrics. Labels are routes, methods, statuses and channels: never contacts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "backinstock_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "backinstock_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SUBSCRIPTIONS_CREATED = Counter(
    "backinstock_subscriptions_created_total", "Subscriptions created", ["channel"]
)
CLICKS = Counter("backinstock_clicks_total", "Tracked links followed", ["channel"])
CONVERSIONS = Counter(
    "backinstock_conversions_total", "Order lines attributed to a message", ["channel", "method"]
)
COUPONS_REDEEMED = Counter("backinstock_coupons_redeemed_total", "Coupons used in an order")
IN_DOUBT_MESSAGES = Gauge(
    "backinstock_in_doubt_messages",
    "Messages a crash left in flight, by channel and how each was settled "
    "(unresolved, found, callback, resent, dropped); read from the database at scrape time",
    ["channel", "resolution"],
)
REDIS_AVAILABLE = Gauge(
    "backinstock_redis_available",
    "1 while this process's last Redis call for rate limits succeeded, 0 while it falls back",
)
RATE_LIMIT_LOCAL = Counter(
    "backinstock_rate_limit_local_total",
    "Rate-limit checks counted in this process only because Redis did not answer",
)
