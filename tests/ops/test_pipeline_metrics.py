"""The delivery pipeline on the API's /metrics: read from the database (so one scrape sees
every worker), cached for METRICS_CACHE_SECONDS by the runtime's clock, and the workers'
own counters beside it in the embedded mode."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from backinstock import db
from backinstock.config import MetricsSettings
from backinstock.dispatch import service as dispatch
from backinstock.flows import restock
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from backinstock.stats import pipeline
from tests.clock import SteppingClock
from tests.conftest import ClientFactory, WorkerStarter
from tests.restocks.helpers import post_level, subscribe_many
from tests.workers import settle, tick

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_a_held_wave_shows_as_pending_then_due_then_sent(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client = make_client(metrics=MetricsSettings(metrics_cache_seconds=0))  # every scrape reads
    key = api_keys["all"]
    await subscribe_many(client, key, 4, timezone="UTC")
    await subscribe_many(client, key, 1, start=50, channel="email", contact="a@mailbox.example")
    this_hour = clock.now().replace(minute=0, second=0, microsecond=0)
    window = f"{this_hour.hour:02d}:00-{(this_hour.hour + 2) % 24:02d}:00"
    start_worker(quiet_hours=window)
    before = await scrape(client)
    await post_level(client, key, 10, location="tmall")
    await settle()

    held = await scrape(client)
    assert value(held, "backinstock_notifications", status="pending", channel="sms") == 4
    assert value(held, "backinstock_notifications_due") == 0
    assert value(held, "backinstock_oldest_due_notification_age_seconds") == 0
    assert value(held, "backinstock_waves_open") == 1
    assert ("backinstock_stock_event_age_seconds", (("location", "tmall"),)) in held
    # The histograms are the process's (an API process has one): counted since `before`.
    first = "backinstock_restock_first_message_seconds"
    last = "backinstock_restock_last_message_seconds"
    assert grew(before, held, f"{first}_count") == 1, "the email"
    assert grew(before, held, f"{last}_count") == 0, "SMS still held"
    # The embedded workers count in this process: their counters are on the same page.
    for name, labels, expected in [
        ("backinstock_quiet_hours_holds_total", {"channel": "sms"}, 4),
        ("backinstock_messages_total", {"channel": "email", "outcome": "sent"}, 1),
        ("backinstock_wave_steps_total", {}, 1),
        ("backinstock_wave_messages_planned_total", {}, 5),
    ]:
        assert grew(before, held, name, **labels) == expected, name

    window_end = this_hour + timedelta(hours=2)
    clock.advance((window_end - clock.now()).total_seconds() + 120)
    due = await scrape(client)  # nobody ticked the sweeper: due, unclaimed, waiting
    assert value(due, "backinstock_notifications_due") == 4
    assert 120 <= value(due, "backinstock_oldest_due_notification_age_seconds") < 180

    await tick()
    sent = await scrape(client)
    assert value(sent, "backinstock_notifications", status="pending", channel="sms") == 0
    assert value(sent, "backinstock_notifications_due") == 0
    assert value(sent, "backinstock_oldest_due_notification_age_seconds") == 0
    assert value(sent, "backinstock_last_message_sent_age_seconds") >= 0
    assert grew(before, sent, f"{last}_count") == 1
    assert grew(before, sent, "backinstock_messages_total", channel="sms", outcome="sent") == 4


async def test_figures_are_read_at_most_once_per_cache_period(
    client: httpx.AsyncClient, api_keys: dict[str, str], clock: SteppingClock, runtime: Runtime
) -> None:
    await post_level(client, api_keys["inventory"], 5, location="tmall")
    first = await scrape(client)
    assert value(first, "backinstock_stock_locations") == 1
    await post_level(client, api_keys["inventory"], 5, location="jd")
    assert value(await scrape(client), "backinstock_stock_locations") == 1, "cached"
    clock.advance(runtime.settings.metrics.metrics_cache_seconds)
    assert value(await scrape(client), "backinstock_stock_locations") == 2


async def test_locations_are_capped_or_chosen(
    make_client: ClientFactory, api_keys: dict[str, str], clock: SteppingClock
) -> None:
    capped = make_client(metrics=MetricsSettings(metrics_max_locations=2))
    for location in ("zz-feed", "jd", "tmall"):
        await post_level(capped, api_keys["inventory"], 1, location=location)
    samples = await scrape(capped)
    shown = {dict(labels)["location"] for name, labels in samples if "stock_event_age" in name}
    assert shown == {"jd", "tmall"}, "the first two by name"
    assert value(samples, "backinstock_stock_locations") == 3, "counted up to the cap plus one"

    clock.advance(60)
    chosen = make_client(metrics=MetricsSettings(metrics_locations=["zz-feed", "absent"]))
    samples = await scrape(chosen)
    shown = {dict(labels)["location"] for name, labels in samples if "stock_event_age" in name}
    assert shown == {"zz-feed"}
    assert 60 <= value(samples, "backinstock_stock_event_age_seconds", location="zz-feed") < 120


async def test_a_failed_read_keeps_the_last_figures_and_is_counted(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    clock: SteppingClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await post_level(client, api_keys["inventory"], 5)
    first = await scrape(client)
    assert value(first, "backinstock_waves_open") == 1

    async def database_down(*_: object) -> None:
        raise ConnectionRefusedError

    monkeypatch.setattr(pipeline, "read_figures", database_down)
    clock.advance(runtime.settings.metrics.metrics_cache_seconds)
    failed = await scrape(client)
    name = "backinstock_pipeline_refresh_failures_total"
    assert value(failed, name) == value(first, name) + 1
    assert value(failed, "backinstock_waves_open") == 1, "the last figures are kept"


async def test_a_claim_left_by_a_dead_worker_shows_as_waiting_from_its_lease_end(
    make_client: ClientFactory, api_keys: dict[str, str], runtime: Runtime, clock: SteppingClock
) -> None:
    # Every message of the wave claimed, and the worker gone before it sent any: nothing is
    # pending, yet shoppers wait. Until a sweeper hands the claim back, the oldest-due gauge
    # (what the stall alert reads) counts from the lease's end.
    client = make_client(metrics=MetricsSettings(metrics_cache_seconds=0))
    await subscribe_many(client, api_keys["all"], 3)
    await post_level(client, api_keys["all"], 3)
    async with runtime.sessions() as session:
        wave_id = await session.scalar(select(Wave.id))
    assert wave_id is not None
    await restock.run(runtime.sessions, runtime.settings, wave_id, lambda ids: None)
    lease = timedelta(seconds=runtime.settings.waves.claim_lease_seconds)
    async with db.transaction(runtime.sessions) as session:
        assert len(await dispatch.claim(session, None, lease, uuid.uuid4(), clock.now())) == 3

    clock.advance(lease.total_seconds() - 1)
    held = await scrape(client)
    assert value(held, "backinstock_notifications", status="sending", channel="sms") == 3
    assert value(held, "backinstock_notifications_due") == 0
    assert value(held, "backinstock_oldest_due_notification_age_seconds") == 0
    clock.advance(61)
    lapsed = await scrape(client)
    assert value(lapsed, "backinstock_notifications_due") == 0  # nothing pending
    assert 60 <= value(lapsed, "backinstock_oldest_due_notification_age_seconds") < 61
