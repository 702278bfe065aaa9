from __future__ import annotations

import uuid
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from backinstock import db
from backinstock.config import TwilioSettings
from backinstock.dispatch.models import Notification
from backinstock.restocks.models import Wave
from backinstock.runtime import Runtime
from tests.conftest import ClientFactory
from tests.fakes.twilio import twilio_signature
from tests.helpers import bearer, phone, subscription_body

TOKEN = "callback-token"
BASE = "http://127.0.0.1:8000"  # PUBLIC_BASE_URL: what Twilio signs


@pytest.fixture
def twilio_client(make_client: ClientFactory) -> httpx.AsyncClient:
    return make_client(
        twilio=TwilioSettings(
            twilio_account_sid="AC" + "0" * 32, twilio_auth_token=TOKEN, twilio_from="+15005550006"
        )
    )


async def _post_signed(
    client: httpx.AsyncClient, path: str, params: dict[str, str], token: str = TOKEN
) -> httpx.Response:
    signature = twilio_signature(token, BASE + path, params)
    return await client.post(
        path,
        content=urlencode(params).encode(),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
        },
    )


async def _notification_with_sid(runtime: Runtime, sub_id: str, sid: str) -> None:
    async with db.transaction(runtime.sessions) as session:
        wave = Wave(sku="TSHIRT-RED-M", restock_id=db.new_id())
        session.add(wave)
        await session.flush()
        session.add(
            Notification(
                subscription_id=uuid.UUID(sub_id),
                wave_id=wave.id,
                sku="TSHIRT-RED-M",
                step=1,
                level=1,
                queue_size=1,
                channel="sms",
                status="sent",
                provider_id=sid,
            )
        )


async def test_status_callback_records_delivery(
    twilio_client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    sub = await twilio_client.post(
        "/v1/subscriptions", json=subscription_body(), headers=bearer(api_keys["all"])
    )
    await _notification_with_sid(runtime, sub.json()["id"], "SM" + "a" * 32)
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
    response = await _post_signed(twilio_client, "/v1/providers/twilio/status", params)
    assert response.status_code == 204
    async with runtime.sessions() as session:
        status = await session.scalar(select(Notification.delivery_status))
    assert status == "delivered"


async def test_forged_or_missing_signatures_get_403(twilio_client: httpx.AsyncClient) -> None:
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    forged = await _post_signed(twilio_client, "/v1/providers/twilio/status", params, "wrong")
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "forbidden"
    missing = await twilio_client.post("/v1/providers/twilio/inbound", data=params)
    assert missing.status_code == 403


async def test_callbacks_are_404_when_twilio_is_not_configured(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v1/providers/twilio/status", content=b"MessageSid=x")
    assert response.status_code == 404


@pytest.mark.parametrize("word", ["STOP", " stop ", "Unsubscribe", "退订"])
async def test_inbound_stop_unsubscribes_every_subscription_of_the_number(
    twilio_client: httpx.AsyncClient, api_keys: dict[str, str], word: str
) -> None:
    key = api_keys["all"]
    ids = []
    for sku in ("A", "B"):
        r = await twilio_client.post(
            "/v1/subscriptions", json=subscription_body(sku=sku), headers=bearer(key)
        )
        ids.append(r.json()["id"])
    other = await twilio_client.post(
        "/v1/subscriptions", json=subscription_body(contact=phone(5)), headers=bearer(key)
    )
    params = {"From": "+8613800138000", "Body": word, "MessageSid": "SM2"}
    response = await _post_signed(twilio_client, "/v1/providers/twilio/inbound", params)
    assert response.status_code == 200 and "<Response>" in response.text
    for sub_id in ids:
        got = await twilio_client.get(f"/v1/subscriptions/{sub_id}", headers=bearer(key))
        assert got.json()["status"] == "unsubscribed"
    kept = await twilio_client.get(f"/v1/subscriptions/{other.json()['id']}", headers=bearer(key))
    assert kept.json()["status"] == "waiting"


async def test_other_inbound_text_changes_nothing(
    twilio_client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    r = await twilio_client.post(
        "/v1/subscriptions", json=subscription_body(), headers=bearer(api_keys["all"])
    )
    params = {"From": "+8613800138000", "Body": "when is it back?"}
    await _post_signed(twilio_client, "/v1/providers/twilio/inbound", params)
    got = await twilio_client.get(
        f"/v1/subscriptions/{r.json()['id']}", headers=bearer(api_keys["all"])
    )
    assert got.json()["status"] == "waiting"
