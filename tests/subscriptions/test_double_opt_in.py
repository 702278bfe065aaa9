"""Double opt-in: on a channel in DOUBLE_OPT_IN_CHANNELS a subscription starts pending and
waits in the queue only once its shopper confirms, by the emailed link (through the real
SMTP client to the fake relay), the SMS link or a code replied to the number; WeChat's own
consent confirms at once. Confirming within the window keeps the place; unconfirmed
requests are erased; nobody gets more than one confirmation per SKU a day. Secret keys are
unchanged by default. Time moves only on the test clock."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select, text

from backinstock import db, worker
from backinstock.auth import service as auth
from backinstock.config import OptInSettings, TwilioSettings
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.journal import first_marks
from backinstock.dispatch.models import Kind, Notification, Status
from backinstock.dispatch.outcomes import mark_inflight
from backinstock.identity import confirmation_code
from backinstock.privacy import retention
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from backinstock.subscriptions.models import Subscription
from tests.clock import SteppingClock
from tests.conftest import BACKEND, ClientFactory, WorkerStarter
from tests.conversions.helpers import outbox_by_subscription
from tests.fakes.smtp import FakeSMTP
from tests.fakes.twilio import twilio_signature
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.helpers import post_level
from tests.waiting import eventually
from tests.workers import settle, tick

SKU = "SKU-1"
DAY = 86_400
TWILIO_TOKEN = "inbound-token"
PUBLIC_BASE = "http://127.0.0.1:8000"  # PUBLIC_BASE_URL: what Twilio signs
CONFIRM_LINK = re.compile(r"/c/([A-Za-z0-9_-]{44})")
T = TypeVar("T")
postgres_only = pytest.mark.skipif(BACKEND != "postgres", reason="row locks: PostgreSQL")


def opt_in(channels: str = "sms,email", window: int = DAY) -> dict[str, Any]:
    """Client settings sections and worker settings for double opt-in on ``channels``."""
    return {
        "opt_in": OptInSettings(double_opt_in_channels=channels, confirm_window_seconds=window),
        "twilio": TwilioSettings(
            twilio_account_sid="AC" + "0" * 32, twilio_auth_token=TWILIO_TOKEN
        ),
    }


def worker_opt_in(channels: str = "sms,email", window: int = DAY) -> dict[str, Any]:
    return {"double_opt_in_channels": channels, "confirm_window_seconds": window}


@pytest.fixture
def smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as fake:
        yield fake


def smtp_settings(smtp: FakeSMTP) -> dict[str, Any]:
    return {
        "smtp_host": FakeSMTP.hostname,
        "smtp_port": smtp.port,
        "smtp_starttls": "false",
        "smtp_from": "Shop <shop@shop.example>",
    }


async def subscribe(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    payload = subscription_body(**{"sku": SKU, **body})
    return await client.post("/v1/subscriptions", json=payload, headers=bearer(key))


async def status_of(client: httpx.AsyncClient, key: str, sub_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/subscriptions/{sub_id}", headers=bearer(key))
    return dict(response.json()) if response.status_code == 200 else {"missing": True}


async def confirmations(runtime: Runtime, sub_id: str | None = None) -> int:
    async with runtime.sessions() as session:
        query = select(func.count()).where(Notification.kind == Kind.CONFIRMATION)
        if sub_id is not None:
            query = query.where(Notification.subscription_id == uuid.UUID(sub_id))
        return int(await session.scalar(query) or 0)


def link_in(text: str) -> str:
    match = CONFIRM_LINK.search(text)
    assert match, "the message carries a confirmation link"
    return f"/c/{match.group(1)}"


async def post_inbound(client: httpx.AsyncClient, sender: str, body: str) -> httpx.Response:
    path = "/v1/providers/twilio/inbound"
    params = {"From": sender, "Body": body, "MessageSid": "SM" + "1" * 32}
    return await client.post(
        path,
        content=urlencode(params).encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": twilio_signature(TWILIO_TOKEN, PUBLIC_BASE + path, params),
        },
    )


async def test_by_default_a_secret_key_subscription_waits_at_once(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    start_worker()
    for n, channel, contact in [(1, "sms", phone(1)), (2, "email", "a@mailbox.example")]:
        response = await subscribe(client, api_keys["all"], channel=channel, contact=contact)
        assert response.status_code == 201
        assert response.json()["status"] == "waiting" and response.json()["position"] == n
    await settle()
    assert await confirmations(runtime) == 0


async def test_an_emailed_link_confirms_by_post_and_the_restock_then_reaches_the_shopper(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    smtp: FakeSMTP,
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    start_worker(**worker_opt_in(), **smtp_settings(smtp))
    made = await subscribe(client, key, channel="email", contact="ann@mailbox.example", locale="en")
    assert made.status_code == 201, made.text
    sub = made.json()
    assert (sub["status"], sub["position"]) == ("pending", 1)
    await settle()

    assert [m.rcpt_tos for m in smtp.messages] == [["ann@mailbox.example"]]
    mail = smtp.messages[0].message
    assert mail["Subject"] == "Confirm your alert for 红色T恤 M"
    text = mail.get_body(("plain",))
    assert text is not None
    link = link_in(str(text.get_content()))
    assert "/r/" not in str(text.get_content())  # no tracked link in a confirmation

    page = await client.get(link)  # a mail scanner's prefetch, or the shopper's click
    assert page.status_code == 200 and 'method="post"' in page.text
    assert "<script" not in page.text
    assert (await status_of(client, key, sub["id"]))["status"] == "pending"

    confirmed = await client.post(link)
    assert confirmed.status_code == 200 and "number 1 in line" in confirmed.text
    again = await client.post(link, headers={"accept": "application/json"})
    assert again.json() == {"id": sub["id"], "status": "waiting", "position": 1}
    async with runtime.sessions() as session:
        row = await session.get(Subscription, uuid.UUID(sub["id"]))
        assert row is not None and row.confirmed_at is not None

    assert (await post_level(client, key, 5, sku=SKU)).status_code == 202
    await settle()
    assert len(smtp.messages) == 2
    assert "is back in stock" in str(smtp.messages[1].message["Subject"])


async def test_a_zh_cn_email_confirmation_speaks_chinese(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    start_worker: WorkerStarter,
    smtp: FakeSMTP,
) -> None:
    client = make_client(**opt_in())
    start_worker(**worker_opt_in(), **smtp_settings(smtp))
    await subscribe(client, api_keys["all"], channel="email", contact="li@mailbox.example")
    await settle()
    mail = smtp.messages[0].message
    assert mail["Subject"] == "请确认「红色T恤 M」到货提醒"
    html = mail.get_body(("html",))
    assert html is not None and "确认到货提醒" in str(html.get_content())


async def test_an_sms_confirms_by_its_link_or_by_replying_its_code(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    start_worker(**worker_opt_in())
    by_link = (await subscribe(client, key, contact=phone(1))).json()
    by_code = (await subscribe(client, key, contact=phone(2))).json()
    assert by_link["status"] == by_code["status"] == "pending"
    await settle()
    texts = await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION)
    assert "请确认「红色T恤 M」到货提醒" in texts[by_link["id"]]

    assert (await client.post(link_in(texts[by_link["id"]]))).status_code == 200
    assert (await status_of(client, key, by_link["id"]))["status"] == "waiting"

    code = re.search(r"回复 (\d{6})", texts[by_code["id"]])
    assert code and code.group(1) == confirmation_code(runtime.keys, uuid.UUID(by_code["id"]))
    wrong = f"{(int(code.group(1)) + 1) % 10**6:06d}"
    await post_inbound(client, phone(2), wrong)  # a wrong code confirms nothing
    await post_inbound(client, phone(3), code.group(1))  # nor the right one from another number
    assert (await status_of(client, key, by_code["id"]))["status"] == "pending"
    reply = await post_inbound(client, phone(2), f" {code.group(1)[:3]} {code.group(1)[3:]} ")
    assert reply.status_code == 200 and "<Response>" in reply.text
    assert (await status_of(client, key, by_code["id"]))["status"] == "waiting"


async def test_a_wechat_subscription_is_confirmed_by_the_mini_programs_consent(
    make_client: ClientFactory, api_keys: dict[str, str], runtime: Runtime
) -> None:
    client = make_client(**opt_in("sms,email,wechat"))
    made = await subscribe(
        client, api_keys["all"], channel="wechat", contact="oWeChatUser0000000000000"
    )
    assert made.status_code == 201 and made.json()["status"] == "waiting"
    assert await confirmations(runtime) == 0


async def test_confirming_within_the_window_keeps_the_place_of_the_request(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client, key = make_client(**opt_in("sms")), api_keys["all"]
    start_worker(**worker_opt_in("sms"))
    early = (await subscribe(client, key, contact=phone(1))).json()
    later = (await subscribe(client, key, channel="email", contact="b@mailbox.example")).json()
    assert (early["status"], early["position"]) == ("pending", 1)
    assert (later["status"], later["position"]) == ("waiting", 1)  # pending is not ahead yet
    await settle()
    link = link_in((await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION))[early["id"]])

    clock.advance(DAY - 60)  # a minute before the window closes
    confirmed = await client.post(link, headers={"accept": "application/json"})
    assert confirmed.json()["position"] == 1
    assert (await status_of(client, key, later["id"]))["position"] == 2

    await post_level(client, key, 1, sku=SKU)  # one unit: the first in line is told
    await settle()
    assert list(await outbox_by_subscription(runtime)) == [early["id"]]


async def test_unconfirmed_requests_expire_and_are_erased(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    start_worker(**worker_opt_in())
    stale = (await subscribe(client, key, contact=phone(1))).json()
    await settle()
    link = link_in((await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION))[stale["id"]])
    clock.advance(DAY + 60)
    fresh = (await subscribe(client, key, contact=phone(2))).json()
    await settle()

    late = await client.post(link, headers={"accept": "application/json"})
    assert late.status_code == 410 and late.json()["error"]["code"] == "gone"
    assert (await status_of(client, key, stale["id"]))["status"] == "pending"  # until erased

    await worker.retain_once(runtime)
    assert (await status_of(client, key, stale["id"])) == {"missing": True}
    assert (await status_of(client, key, fresh["id"]))["status"] == "pending"
    assert await confirmations(runtime, stale["id"]) == 0
    async with runtime.sessions() as session:
        outbox = await session.scalar(select(func.count()).select_from(DevOutboxMessage))
    assert outbox == 1  # only the fresh request's confirmation is left
    gone = await client.post(link)
    assert gone.status_code == 410 and "expired" in gone.text

    # Asking again after the window starts a new request, with a new confirmation.
    again = await subscribe(client, key, contact=phone(1))
    assert again.status_code == 201 and again.json()["id"] != stale["id"]


async def test_a_repeat_after_the_window_replaces_the_stale_request(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    start_worker(**worker_opt_in())
    stale = (await subscribe(client, key, contact=phone(1))).json()
    clock.advance(DAY + 60)  # retention has not run yet
    again = await subscribe(client, key, contact=phone(1))
    assert again.status_code == 201 and again.json()["id"] != stale["id"]
    assert (await status_of(client, key, stale["id"])) == {"missing": True}
    await settle()
    assert await confirmations(runtime, again.json()["id"]) == 1


async def confirmation_of(runtime: Runtime, sub_id: str) -> uuid.UUID:
    async with runtime.sessions() as session:
        found = await session.scalar(
            select(Notification.id).where(
                Notification.subscription_id == uuid.UUID(sub_id),
                Notification.kind == Kind.CONFIRMATION,
            )
        )
    assert found is not None
    return found


async def someone_waits_for_a_lock(runtime: Runtime) -> bool:
    async with runtime.sessions() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def while_a_worker_sends_it(
    runtime: Runtime,
    clock: SteppingClock,
    confirmation: uuid.UUID,
    erasing: Callable[[], Coroutine[Any, Any, T]],
) -> T:
    """Run a worker's claim transaction on the stale request's confirmation, statement by
    statement as ``dispatch.deliver`` does, with ``erasing`` started between its claim and
    its first marks (the request is erased while that claim is under way); its result."""
    settings = runtime.settings
    async with db.transaction(runtime.sessions) as session:
        claim_id, now = uuid.uuid4(), clock.now()
        lease = timedelta(seconds=settings.waves.claim_lease_seconds)
        claimed = await dispatch.claim(session, [confirmation], lease, claim_id, now)
        assert claimed == [confirmation]
        erase = asyncio.create_task(erasing())
        await eventually(
            lambda: erase.done() or someone_waits_for_a_lock(runtime), 10, "erasing is under way"
        )
        deliveries = await dispatch.prepare(session, settings, runtime.keys, claimed, now)
        lookahead = {"sms": settings.delivery.lookahead("sms")}
        marks = first_marks(deliveries, lookahead)
        assert marks, "the claim marks its first calls in its own transaction"
        assert await mark_inflight(session, claim_id, marks, now) == {confirmation}
    return await erase


@postgres_only
async def test_a_repeat_while_a_worker_sends_the_stale_confirmation_waits_for_it(
    make_client: ClientFactory, api_keys: dict[str, str], runtime: Runtime, clock: SteppingClock
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    stale = (await subscribe(client, key, contact=phone(1))).json()
    clock.advance(DAY + 60)
    confirmation = await confirmation_of(runtime, stale["id"])
    again = await while_a_worker_sends_it(
        runtime, clock, confirmation, lambda: subscribe(client, key, contact=phone(1))
    )
    assert again.status_code == 201, again.text
    assert (await status_of(client, key, stale["id"])) == {"missing": True}


@postgres_only
async def test_retention_erasing_a_request_while_a_worker_sends_its_confirmation_waits_for_it(
    make_client: ClientFactory, api_keys: dict[str, str], runtime: Runtime, clock: SteppingClock
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    stale = (await subscribe(client, key, contact=phone(1))).json()
    clock.advance(DAY + 60)

    async def sweep() -> int:
        async with db.transaction(runtime.sessions) as session:
            return await retention.discard_unconfirmed(session, runtime.settings, clock.now())

    confirmation = await confirmation_of(runtime, stale["id"])
    assert await while_a_worker_sends_it(runtime, clock, confirmation, sweep) == 1
    assert (await status_of(client, key, stale["id"])) == {"missing": True}


async def test_nobody_gets_more_than_one_confirmation_per_sku_a_day(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client, key = make_client(**opt_in(window=3 * DAY)), api_keys["all"]
    start_worker(**worker_opt_in(window=3 * DAY))
    first = await subscribe(client, key, contact=phone(1))
    repeat = await subscribe(client, key, contact=phone(1))
    assert (first.status_code, repeat.status_code) == (201, 200)
    assert repeat.json()["id"] == first.json()["id"]
    await settle()
    # Withdrawn and asked again the same day: a new request, but no second message.
    withdrawn = await client.delete(f"/v1/subscriptions/{first.json()['id']}", headers=bearer(key))
    assert withdrawn.status_code == 204
    renewed = await subscribe(client, key, contact=phone(1))
    assert renewed.status_code == 201 and renewed.json()["status"] == "pending"
    other_sku = await subscribe(client, key, contact=phone(1), sku="SKU-2")
    await settle()
    assert await confirmations(runtime) == 2  # the first request's and SKU-2's

    clock.advance(DAY - 60)
    await subscribe(client, key, contact=phone(1))
    assert await confirmations(runtime) == 2
    clock.advance(120)  # a day after the first one
    await subscribe(client, key, contact=phone(1))
    await settle()
    assert await confirmations(runtime, renewed.json()["id"]) == 1
    assert await confirmations(runtime, other_sku.json()["id"]) == 1
    assert await confirmations(runtime) == 3
    async with runtime.sessions() as session:
        sent = await session.scalar(
            select(func.count()).where(
                Notification.kind == Kind.CONFIRMATION, Notification.status == Status.SENT
            )
        )
    assert sent == 3


async def test_pending_requests_are_neither_notified_nor_counted_as_waiting(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    client, key = make_client(**opt_in("sms")), api_keys["all"]
    start_worker(**worker_opt_in("sms"))
    await subscribe(client, key, contact=phone(1))  # pending
    waiting = (await subscribe(client, key, channel="email", contact="w@mailbox.example")).json()
    restock = await post_level(client, key, 10, sku=SKU)
    assert restock.json()["waiting"] == 1 and restock.json()["first_wave"] == 1
    await settle()
    assert list(await outbox_by_subscription(runtime)) == [waiting["id"]]

    funnel = (await client.get("/v1/stats/funnel", headers=bearer(key))).json()
    assert (funnel["subscribed"], funnel["notified"]) == (1, 1)
    demand = (await client.get("/v1/stats/demand", headers=bearer(key))).json()
    assert [item["waiting"] for item in demand["items"]] == [1]


async def test_a_secret_key_that_vouches_confirms_a_pending_request(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    asks, vouches = make_client(**opt_in()), make_client()
    pending = (await subscribe(asks, api_keys["all"], contact=phone(1))).json()
    vouched = await subscribe(vouches, api_keys["all"], contact=phone(1))
    assert vouched.status_code == 200 and vouched.json()["id"] == pending["id"]
    assert (vouched.json()["status"], vouched.json()["position"]) == ("waiting", 1)


async def test_stop_withdraws_a_pending_request(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    client, key = make_client(**opt_in()), api_keys["all"]
    start_worker(**worker_opt_in())
    sub = (await subscribe(client, key, contact=phone(1))).json()
    await settle()
    link = link_in((await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION))[sub["id"]])
    assert (await post_inbound(client, phone(1), "退订")).status_code == 200
    assert (await status_of(client, key, sub["id"]))["status"] == "unsubscribed"
    assert (await client.post(link)).status_code == 410


async def test_quiet_hours_do_not_hold_a_confirmation(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    client, key = make_client(**opt_in("sms")), api_keys["all"]
    now = datetime.now(UTC)  # quiet from an hour ago to two hours from now, in UTC
    hours = f"{(now - timedelta(hours=1)):%H}:00-{(now + timedelta(hours=2)):%H}:00"
    start_worker(**worker_opt_in("sms"), quiet_hours=hours)
    confirming = (await subscribe(client, key, contact=phone(1), timezone="UTC")).json()
    await settle()
    assert confirming["id"] in await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION)
    # A restock SMS in the same hours is held (the vouching repeat makes it wait at once).
    assert (await subscribe(make_client(), key, contact=phone(1))).json()["status"] == "waiting"
    await post_level(client, key, 5, sku=SKU)
    await settle()
    async with runtime.sessions() as session:
        held = await session.scalar(
            select(Notification.error).where(
                Notification.kind == Kind.RESTOCK,
                Notification.subscription_id == uuid.UUID(confirming["id"]),
            )
        )
    assert held == "quiet_hours"


async def test_a_confirmation_whose_worker_died_is_sent_by_the_next_one(
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    client = make_client(**opt_in())
    sub = (await subscribe(client, api_keys["all"], contact=phone(1))).json()
    async with db.transaction(runtime.sessions) as session:  # a worker claims it, then dies
        claimed = await dispatch.claim(
            session, None, timedelta(seconds=15), uuid.uuid4(), clock.now()
        )
    assert len(claimed) == 1
    start_worker(**worker_opt_in(), claim_lease_seconds=15)
    await settle()  # the wake-up finds it claimed: nothing sent
    assert await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION) == {}
    clock.advance(60)  # the lease lapses; the sweeper hands it back and a drain sends it
    await tick()
    await tick()
    assert sub["id"] in await outbox_by_subscription(runtime, kind=Kind.CONFIRMATION)


async def test_a_pages_request_is_confirmed_by_email_and_then_notified(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    smtp: FakeSMTP,
) -> None:
    """A publishable key needs no setting: its requests always wait for confirmation."""
    async with db.transaction(runtime.sessions) as session:
        page_key = await auth.create_key(session, "page", [], origins=["https://shop.example"])
    start_worker(**smtp_settings(smtp))
    body = subscription_body(sku=SKU, channel="email", contact="pat@mailbox.example", locale="en")
    del body["customer_id"]
    made = await client.post(
        "/v1/subscriptions",
        json=body,
        headers={**bearer(page_key), "Origin": "https://shop.example"},
    )
    assert made.status_code == 201 and made.json()["status"] == "pending"
    await settle()
    text = smtp.messages[0].message.get_body(("plain",))
    assert text is not None
    assert (await client.post(link_in(str(text.get_content())))).status_code == 200
    await post_level(client, api_keys["all"], 3, sku=SKU)
    await settle()
    assert [m.rcpt_tos for m in smtp.messages] == [["pat@mailbox.example"]] * 2
    assert "back in stock" in str(smtp.messages[1].message["Subject"])
