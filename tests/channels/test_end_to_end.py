"""A restock reaches SMS, email and WeChat shoppers through the real clients (twilio SDK,
aiosmtplib, httpx) against local fake providers, with failures injected."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backinstock.dispatch.models import Notification
from backinstock.identity import UNSUBSCRIBE_TOKEN
from backinstock.runtime import Runtime
from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.fakes.smtp import FakeSMTP
from tests.fakes.twilio import FakeTwilio
from tests.fakes.wechat import FakeWeChat
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.helpers import post_level
from tests.workers import settle, tick_until_delivered

SID, TOKEN, APPID, SECRET = "AC" + "0" * 32, "twilio-token", "wx-app", "wx-secret"
REFUSED = "oRefusedUser0000000000000"
JITTER = 3  # requests a fake provider's bucket holds beyond its burst (see below)


@pytest.fixture
def providers() -> Iterator[dict[str, Any]]:
    twilio = FakeTwilio(account_sid=SID, auth_token=TOKEN, invalid_numbers=[phone(3)], seed=42)
    smtp = FakeSMTP(seed=42)
    wechat = FakeWeChat(appid=APPID, secret=SECRET, refused_users=[REFUSED], seed=42)
    for fake in (twilio, smtp, wechat):
        fake.start()
    yield {"twilio": twilio, "smtp": smtp, "wechat": wechat}
    for fake in (twilio, smtp, wechat):
        fake.stop()


def provider_settings(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "twilio_account_sid": SID,
        "twilio_auth_token": TOKEN,
        "twilio_from": "+15005550006",
        "twilio_api_base": p["twilio"].base_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": p["smtp"].port,
        "smtp_starttls": "false",
        "smtp_from": "shop@shop.example",
        "wechat_app_id": APPID,
        "wechat_app_secret": SECRET,
        "wechat_template_id": "TPL-restock",
        "wechat_api_base": p["wechat"].base_url,
        "claim_lease_seconds": 5,
        "stale_after_seconds": 1,
    }


async def _subscribe(client: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/subscriptions", json=subscription_body(**{"sku": "SKU-1", **body}), headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_every_channel_through_the_real_clients_with_fallbacks(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await _subscribe(client, key, channel="sms", contact=phone(1), locale="en")
    await _subscribe(client, key, channel="email", contact="ann@mailbox.example", locale="en")
    await _subscribe(client, key, channel="wechat", contact="oGoodUser00000000000000000")
    # An SMS number the provider rejects, and a WeChat user who refused: both have email.
    await _subscribe(
        client,
        key,
        channel="sms",
        contact=phone(3),
        fallbacks=[{"channel": "email", "contact": "bad-number@mailbox.example"}],
    )
    await _subscribe(
        client,
        key,
        channel="wechat",
        contact=REFUSED,
        fallbacks=[{"channel": "email", "contact": "refused@mailbox.example"}],
    )
    start_worker(**provider_settings(providers))
    assert (await post_level(client, key, 50)).status_code == 202

    twilio, smtp, wechat = providers["twilio"], providers["smtp"], providers["wechat"]
    await tick_until_delivered(runtime, clock)  # the fallbacks go out on the sweeper's tick
    assert (len(smtp.messages), len(twilio.messages), len(wechat.messages)) == (3, 1, 1)
    sms = twilio.messages[0]
    assert sms.to == phone(1) and "红色T恤 M" in sms.body and "/r/" in sms.body
    assert sms.status_callback.split("?n=")[0].endswith("/v1/providers/twilio/status")
    assert [m.touser for m in wechat.messages] == ["oGoodUser00000000000000000"]
    assert "bis_token=" in (wechat.messages[0].page or "")
    emails = {next(iter(m.rcpt_tos)): m.message for m in smtp.messages}
    assert set(emails) == {
        "ann@mailbox.example",
        "bad-number@mailbox.example",
        "refused@mailbox.example",
    }
    mail = emails["ann@mailbox.example"]
    assert (
        mail["List-Unsubscribe"].strip().startswith("<http") and "/u/" in mail["List-Unsubscribe"]
    )
    assert mail["List-Unsubscribe-Post"].strip() == "List-Unsubscribe=One-Click"
    assert "红色T恤 M" in mail["Subject"]

    async with runtime.sessions() as session:
        sent = await session.scalar(select(func.count()).where(Notification.status == "sent"))
    assert sent == 5


async def test_one_click_unsubscribe_means_not_told_again(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
) -> None:
    key = api_keys["all"]
    leaving = await _subscribe(client, key, channel="email", contact="leaving@mailbox.example")
    await _subscribe(client, key, channel="email", contact="staying@mailbox.example")
    start_worker(**provider_settings(providers))
    await post_level(client, key, 5, occurred=0)
    smtp = providers["smtp"]
    await settle()
    assert len(smtp.messages) == 2
    message = next(m.message for m in smtp.messages if "leaving@" in m.rcpt_tos[0])
    url = message["List-Unsubscribe"].strip().strip("<>")
    token = url.rsplit("/u/", 1)[1]
    assert runtime.keys.tokens.verify(UNSUBSCRIBE_TOKEN, token) == uuid.UUID(leaving["id"])
    one_click = await client.post(
        f"/u/{token}",
        content=message["List-Unsubscribe-Post"].encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200

    await post_level(client, key, 0, occurred=10)
    await post_level(client, key, 5, occurred=20)  # the next restock
    await settle()
    recipients = [m.rcpt_tos[0] for m in smtp.messages]
    assert recipients.count("leaving@mailbox.example") == 1
    assert recipients.count("staying@mailbox.example") == 2


async def test_transient_errors_still_reach_everyone_exactly_once(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    twilio, smtp, wechat = providers["twilio"], providers["smtp"], providers["wechat"]
    twilio.transient_error_rate = smtp.transient_error_rate = wechat.transient_error_rate = 0.2
    for i in range(20):
        await _subscribe(client, key, channel="sms", contact=phone(100 + i))
        await _subscribe(client, key, channel="email", contact=f"s{i}@mailbox.example")
        await _subscribe(client, key, channel="wechat", contact=f"oTransient{i:016d}")
    start_worker(**provider_settings(providers))
    await post_level(client, key, 100)
    await tick_until_delivered(runtime, clock)  # retries are due on later ticks
    assert (len(twilio.messages), len(smtp.messages), len(wechat.messages)) == (20, 20, 20)
    assert len({m.to for m in twilio.messages}) == 20
    assert len({m.rcpt_tos[0] for m in smtp.messages}) == 20
    assert len({m.touser for m in wechat.messages}) == 20
    for fake in (twilio, smtp, wechat):
        assert sum(fake.error_counts.values()) > 0, "the fakes did inject failures"


async def test_provider_rate_limit_is_never_exceeded(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
) -> None:
    key = api_keys["all"]
    twilio = providers["twilio"]
    # The provider allows 10/s with a burst of 10, and takes requests as they arrive: later
    # than the sender's throttle let them go, by however long this busy process (the fake
    # serves from a thread beside the workers) took to read them. Held-up requests arrive
    # together, so the provider's bucket holds JITTER more: bunching of up to 0.3 s. A
    # sender that ignored the limit, or went even 13/s, would still empty it: after the
    # burst, 40 messages through a 10/s bucket of 13 take at least 2.7 s.
    twilio.rate = type(twilio.rate)(10, 10 + JITTER)
    for i in range(40):
        await _subscribe(client, key, channel="sms", contact=phone(200 + i))
    # Eight sender threads share the one bucket. (One embedded worker per process: Dramatiq's
    # event-loop thread is process-wide.)
    start_worker(threads=8, **{**provider_settings(providers), "twilio_rate_per_second": 10})
    await post_level(client, key, 100)
    await settle()
    assert twilio.error_counts[20429] == 0, "the provider never had to refuse us"
    assert len(twilio.messages) == 40


async def test_wechat_consents_are_spent_one_per_message_then_email_takes_over(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
) -> None:
    key = api_keys["all"]
    await _subscribe(
        client,
        key,
        channel="wechat",
        contact="oOneConsent000000000000000",
        consent={"text_version": "2026-01", "wechat_messages": 1},
        fallbacks=[{"channel": "email", "contact": "one-consent@mailbox.example"}],
    )
    start_worker(**provider_settings(providers))
    wechat, smtp = providers["wechat"], providers["smtp"]
    await post_level(client, key, 5, occurred=0)
    await settle()
    assert len(wechat.messages) == 1
    await post_level(client, key, 0, occurred=10)
    await post_level(client, key, 5, occurred=20)  # the next restock: no consent left
    await settle()
    assert len(smtp.messages) == 1
    assert len(wechat.messages) == 1, "a consent is never spent twice"


async def test_a_held_unit_is_announced_with_its_time_through_every_real_client(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    providers: dict[str, Any],
    clock: SteppingClock,
) -> None:
    """The reserved time reaches the shopper as the provider carries it: in the SMS body,
    the email's subject, and a WeChat subscribe message's text and ``time`` field."""
    key = api_keys["all"]
    await _subscribe(client, key, channel="sms", contact=phone(1), locale="en")
    await _subscribe(client, key, channel="email", contact="ann@mailbox.example", locale="en")
    await _subscribe(client, key, channel="wechat", contact="oGoodUser00000000000000000")
    field_map = {
        "thing1": "product_name",
        "phrase2": "status",
        "thing3": "text",
        "time4": "data.held_until",
    }
    settings = {**provider_settings(providers), "wechat_field_map": json.dumps(field_map)}
    start_worker(**settings, hold_seconds=1800)
    assert (await post_level(client, key, 3)).status_code == 202

    twilio, smtp, wechat = providers["twilio"], providers["smtp"], providers["wechat"]
    await tick_until_delivered(runtime, clock)
    assert (len(twilio.messages), len(smtp.messages), len(wechat.messages)) == (1, 1, 1)
    assert re.search(r"Yours until (\d+ \w{3} )?\d{2}:\d{2}\.", twilio.messages[0].body)
    subject = smtp.messages[0].message["Subject"]
    assert re.search(r"reserved for you until (\d+ \w{3} )?\d{2}:\d{2}", subject), subject
    data = wechat.messages[0].data
    assert data["thing3"]["value"].startswith("已为您保留至"), data
    assert re.fullmatch(r"\d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}", data["time4"]["value"]), data
