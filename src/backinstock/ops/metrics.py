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
SAVED_BY_SUBSTITUTE = Counter(
    "backinstock_saved_by_substitute_total",
    "Order lines of a substitute a waiting shopper's substitute message offered",
    ["channel"],
)
# backinstock_in_doubt_messages{channel,resolution} (crash resolutions, from the database)
# is one of the pipeline figures: stats/pipeline.py.
REDIS_AVAILABLE = Gauge(
    "backinstock_redis_available",
    "1 while this process's last Redis call for rate limits succeeded, 0 while it falls back",
)
RATE_LIMIT_LOCAL = Counter(
    "backinstock_rate_limit_local_total",
    "Rate-limit checks counted in this process only because Redis did not answer",
)

# ---------------------------------------------------------------------------------------
# The delivery pipeline, as each worker process sees it. Counted in the worker processes
# (and in ``serve`` when embedded); `backinstock worker --metrics-port` serves the sum over
# its Dramatiq processes (prometheus_client's multiprocess mode, see ops/exposition.py).
# Labels are bounded sets: channels, outcomes, reasons; never a contact, never an id.

CHANNELS = ("sms", "email", "wechat")
# What happened to a message at a provider, or to a message a crash left in flight.
MESSAGE_OUTCOMES = ("sent", "transient", "permanent", "in_doubt", "resolved")
MESSAGES = Counter(
    "backinstock_messages_total",
    "Messages by channel and outcome: sent, transient or permanent (the provider's answer, "
    "once recorded), in_doubt (a crash left the call in flight), resolved (an in-doubt "
    "message settled: found at the provider, sent again or dropped)",
    ["channel", "outcome"],
)
IN_DOUBT_RESOLUTIONS = Counter(
    "backinstock_in_doubt_resolutions_total",
    "In-doubt messages settled by the workers, by how (found, resent, dropped)",
    ["channel", "resolution"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "backinstock_provider_call_seconds",
    "Time of one provider call (Twilio, SMTP, WeChat), from its start to the answer",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter(
    "backinstock_retries_total",
    "Transient provider errors given another attempt later (backoff with jitter)",
    ["channel"],
)
GAVE_UP = Counter(
    "backinstock_messages_failed_total",
    "Messages given up for good, by why: retries_exhausted (transient errors every "
    "attempt), no_contact (every contact failed or was erased), render_failed",
    ["reason"],
)
FALLBACKS = Counter(
    "backinstock_fallbacks_total",
    "Permanent errors on a contact of this channel that moved the message to the "
    "shopper's next contact",
    ["channel"],
)
QUIET_HOLDS = Counter(
    "backinstock_quiet_hours_holds_total",
    "Messages held back until the shopper's quiet hours end (not an attempt)",
    ["channel"],
)
CLAIMS_CUT_SHORT = Counter(
    "backinstock_claims_cut_short_total",
    "Claims that stopped starting calls because their lease, as last committed, was near "
    "its end (the database too slow to commit a renewal); what never started went back",
)
CONSENT_EXHAUSTED = Counter(
    "backinstock_consent_exhausted_total",
    "Messages whose shopper had no WeChat subscribe-message consent left (a fallback "
    "contact is used, if any)",
)
WAVE_STEPS = Counter("backinstock_wave_steps_total", "Wave steps begun by the workers")
WAVE_MESSAGES_PLANNED = Counter(
    "backinstock_wave_messages_planned_total", "Restock messages written by wave steps"
)
SWEEPS = Counter(
    "backinstock_sweeps_total", "Sweeper ticks run (every worker process, every second)"
)
SWEEP_FAILURES = Counter(
    "backinstock_sweep_failures_total", "Sweeper ticks that failed (the database was down)"
)


def initialise_worker_metrics() -> None:
    """Every channel's series start at 0, so that the first message of a kind shows as an
    increase (a series that appears at 1 shows none to ``increase()``)."""
    for channel in CHANNELS:
        for outcome in MESSAGE_OUTCOMES:
            MESSAGES.labels(channel=channel, outcome=outcome)
        PROVIDER_CALL_SECONDS.labels(channel=channel)
        RETRIES.labels(channel=channel)
        FALLBACKS.labels(channel=channel)
    QUIET_HOLDS.labels(channel="sms")
    for reason in ("retries_exhausted", "no_contact", "render_failed"):
        GAVE_UP.labels(reason=reason)


# The pipeline as the database shows it (pending, due, open waves, restock latencies, silent
# stock feeds) is read by the API's /metrics: stats/pipeline.py, registered by ops/router.
