"""A restock message's "reserved for you until …": the time on the shopper's wall clock, in
their language, in every channel; never stated once the reservation is over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from backinstock.dispatch.render import MessageContext, render, wall_time, wechat_time
from backinstock.restocks.models import StockHold
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.conversions.helpers import SKU, outbox_by_subscription, subscribe_by_email
from tests.restocks.helpers import outbox_count, post_level, subscribe_many
from tests.workers import settle, tick

LINK = "https://shop.example/r/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
STOP = "https://shop.example/u/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PAGE = "https://shop.example/s/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
RESERVED = {"zh-CN": "保留至10:30", "en": "until 10:30"}
HOLD = 1800

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai


@pytest.mark.parametrize(
    ("moment", "zone", "locale", "expected"),
    [
        (datetime(2026, 12, 6, 2, 30, tzinfo=UTC), "Asia/Shanghai", "zh-CN", "10:30"),
        (datetime(2026, 12, 6, 2, 30, tzinfo=UTC), "Europe/Paris", "en", "03:30"),
        (datetime(2026, 12, 6, 16, 30, tzinfo=UTC), "Asia/Shanghai", "zh-CN", "12月7日 00:30"),
        (datetime(2026, 12, 6, 16, 30, tzinfo=UTC), "Asia/Shanghai", "en", "7 Dec 00:30"),
        # Still the 5th in Los Angeles when it is the 6th in UTC: the shopper's own day.
        (datetime(2026, 12, 6, 2, 30, tzinfo=UTC), "America/Los_Angeles", "en", "18:30"),
    ],
)
def test_the_time_is_the_shoppers_wall_clock(
    moment: datetime, zone: str, locale: str, expected: str
) -> None:
    assert wall_time(moment, NOW, zone, locale) == expected


def test_wechat_time_fields_get_the_form_wechat_takes() -> None:
    moment = datetime(2026, 12, 6, 16, 30, tzinfo=UTC)
    assert wechat_time(moment, "Asia/Shanghai") == "2026年12月7日 00:30"


def _context(held_until: str | None, product_name: str = "Red T-shirt") -> MessageContext:
    return MessageContext(
        name="Ann",
        product_name=product_name,
        link=LINK,
        unsubscribe_url=STOP,
        level=5,
        queue_size=12,
        page_url=PAGE,
        held_until=held_until,
    )


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_every_channel_states_the_reservation_only_when_there_is_one(locale: str) -> None:
    for channel in ("sms", "email", "wechat"):
        held = render(channel, locale, _context("10:30")).text
        assert RESERVED[locale] in held, (channel, held)
        free = render(channel, locale, _context(None)).text
        assert "10:30" not in free and "None" not in free, (channel, free)
    email = render("email", locale, _context("10:30"))
    assert email.subject is not None and "10:30" in email.subject
    assert email.html is not None and "<strong>10:30</strong>" in email.html


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_a_wechat_reservation_fits_its_field(locale: str) -> None:
    """``thing`` fields take 20 characters: the reservation is the whole text."""
    text = render("wechat", locale, _context("10:30", "超长商品名称" * 10)).text
    assert len(text) <= 20 and "10:30" in text


async def test_an_email_says_until_when_on_the_shoppers_clock(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    [paris] = await subscribe_by_email(client, key, 1, timezone="Europe/Paris", locale="en")
    start_worker(hold_seconds=HOLD)
    assert (await post_level(client, key, 1, sku=SKU)).status_code == 202
    await settle()
    async with runtime.sessions() as session:
        until = (await session.scalars(select(StockHold.until))).one()
    local = until.astimezone(ZoneInfo("Europe/Paris"))
    told = wall_time(until, until - timedelta(seconds=HOLD), "Europe/Paris", "en")
    assert told.endswith(f"{local:%H:%M}")
    body = (await outbox_by_subscription(runtime))[paris]
    assert f"We have reserved one for you until {told}." in body, body


async def test_an_sms_held_past_its_reservation_by_quiet_hours_does_not_promise_it(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 2, timezone="UTC", locale="en")
    this_hour = clock.now().replace(minute=0, second=0, microsecond=0)
    window = f"{this_hour.hour:02d}:00-{(this_hour.hour + 2) % 24:02d}:00"
    start_worker(quiet_hours=window, hold_seconds=HOLD)
    assert (await post_level(client, key, 2)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 0, "held for quiet hours"

    window_end = this_hour + timedelta(hours=2)  # later than the reservation (30 min)
    clock.advance((window_end - clock.now()).total_seconds() + 60)
    await tick()
    await settle()
    texts = list((await outbox_by_subscription(runtime)).values())
    assert len(texts) == 2
    for text in texts:
        assert "back in stock" in text and "Reserved" not in text, text
