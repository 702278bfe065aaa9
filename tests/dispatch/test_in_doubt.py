"""Messages a crash left in doubt, settled per channel: SMS looked up in Twilio's Messages
list through the official SDK (found: recorded, not sent again; absent: sent), a status
callback that names the notification, and the figures /metrics shows for them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, update

from backinstock import db
from backinstock.config import TwilioSettings
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import InDoubt, Notification, Status
from backinstock.runtime import Runtime
from backinstock.senders.twilio_sms import TwilioSmsSender
from tests.conftest import ClientFactory
from tests.dispatch.test_journal import _plan, _senders
from tests.fakes.twilio import FakeTwilio, twilio_signature
from tests.helpers import bearer

SID, TOKEN = "AC" + "1" * 32, "in-doubt-token"
BASE = "http://127.0.0.1:8000"  # PUBLIC_BASE_URL: what Twilio signs


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=SID, auth_token=TOKEN) as fake:
        yield fake


def _sms_sender(fake: FakeTwilio) -> TwilioSmsSender:
    settings = TwilioSettings(
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from="+15005550006",
        twilio_api_base=fake.base_url,
    )
    return TwilioSmsSender(settings, BASE + "/v1/providers/twilio/status")


async def _deliver(runtime: Runtime, sender: TwilioSmsSender, ids: list[uuid.UUID] | None) -> None:
    senders = _senders(runtime, sender)
    await dispatch.deliver(runtime.sessions, runtime.settings, runtime.keys, senders, ids)


async def _ids(runtime: Runtime) -> list[uuid.UUID]:
    async with runtime.sessions() as session:
        return list(await session.scalars(select(Notification.id).order_by(Notification.id)))


async def _crash_left_in_doubt(runtime: Runtime, ids: list[uuid.UUID]) -> None:
    """What the sweeper makes of calls a dead worker had in flight (reconcile/resend)."""
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(Notification)
            .where(Notification.id.in_(ids))
            .values(
                status=Status.PENDING,
                in_doubt=InDoubt.UNRESOLVED,
                provider_id=None,
                sent_at=None,
                channel="sms",
            )
        )


async def _rows(runtime: Runtime) -> dict[uuid.UUID, tuple[str, str | None, str | None]]:
    async with runtime.sessions() as session:
        rows = await session.execute(
            select(
                Notification.id,
                Notification.status,
                Notification.in_doubt,
                Notification.provider_id,
            )
        )
        return {row.id: (row.status, row.in_doubt, row.provider_id) for row in rows}


async def test_sms_in_doubt_is_looked_up_and_only_the_missing_one_is_sent(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, twilio: FakeTwilio
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 3)
    ids = await _ids(runtime)
    sender = _sms_sender(twilio)
    # Twilio accepted the first two; the worker died before recording them (or the third
    # never left it at all).
    await _deliver(runtime, sender, ids[:2])
    accepted = {m.to: m.sid for m in twilio.messages}
    await _crash_left_in_doubt(runtime, ids)

    await _deliver(runtime, sender, None)
    await sender.close()

    assert len(twilio.messages) == 3 and twilio.list_requests == 3
    rows = await _rows(runtime)
    found = {rows[i][2] for i in ids[:2]}
    assert found == set(accepted.values())
    assert [rows[i][:2] for i in ids] == [
        ("sent", InDoubt.FOUND.value),
        ("sent", InDoubt.FOUND.value),
        ("sent", InDoubt.RESENT.value),
    ]
    metrics = (await client.get("/metrics")).text
    assert 'backinstock_in_doubt_messages{channel="sms",resolution="found"} 2.0' in metrics
    assert 'backinstock_in_doubt_messages{channel="sms",resolution="resent"} 1.0' in metrics
    view = await client.get(
        "/v1/notifications/in-doubt", params={"limit": 2}, headers=bearer(api_keys["admin"])
    )
    rest = await client.get(
        "/v1/notifications/in-doubt",
        params={"cursor": view.json()["next_cursor"]},
        headers=bearer(api_keys["admin"]),
    )
    listed = view.json()["items"] + rest.json()["items"]
    assert sorted((i["notification_id"], i["resolution"], i["status"]) for i in listed) == sorted(
        (str(i), rows[i][1], "sent") for i in ids
    )
    assert rest.json()["next_cursor"] is None


async def test_sms_not_resent_while_twilio_cannot_be_asked(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime, twilio: FakeTwilio
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 2)
    await _crash_left_in_doubt(runtime, await _ids(runtime))
    twilio.auth_token = "rotated"  # every call now answers 401, the list included
    sender = _sms_sender(twilio)
    await _deliver(runtime, sender, None)
    await sender.close()
    assert twilio.messages == [] and twilio.list_requests == 0
    rows = await _rows(runtime)
    # Retried later, still unresolved: a blind resend could duplicate a message.
    assert set(rows.values()) == {("pending", InDoubt.UNRESOLVED.value, None)}


async def test_a_status_callback_naming_the_notification_settles_it(
    client: httpx.AsyncClient,
    make_client: ClientFactory,
    api_keys: dict[str, str],
    runtime: Runtime,
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 2)
    doubtful, untouched = await _ids(runtime)
    await _crash_left_in_doubt(runtime, [doubtful])
    twilio_client = make_client(
        twilio=TwilioSettings(
            twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from="+15005550006"
        )
    )
    for notification_id, sid in ((doubtful, "SM" + "d" * 32), (untouched, "SM" + "e" * 32)):
        path = f"/v1/providers/twilio/status?{urlencode({'n': str(notification_id)})}"
        params = {"MessageSid": sid, "MessageStatus": "delivered"}
        response = await twilio_client.post(
            path,
            content=urlencode(params).encode(),
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": twilio_signature(TOKEN, BASE + path, params),
            },
        )
        assert response.status_code == 204
    rows = await _rows(runtime)
    assert rows[doubtful] == ("sent", InDoubt.CALLBACK.value, "SM" + "d" * 32)
    # A message nobody doubts is not touched by a report that only names it.
    assert rows[untouched] == ("pending", None, None)
    async with runtime.sessions() as session:
        status = await session.scalar(
            select(Notification.delivery_status).where(Notification.id == doubtful)
        )
    assert status == "delivered"
