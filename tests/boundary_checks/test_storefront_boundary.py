"""Hostile input at the storefront's doors: the Origin and Authorization a page sends with
a publishable key, the confirmation link's token, and the replies an SMS number sends. Each
is answered for what it is (401, 403, 404, 422) in the one error shape, never a 500, never
echoing what was sent."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from backinstock import db
from backinstock.auth import service as auth
from backinstock.config import OptInSettings, TwilioSettings
from backinstock.identity import CLICK_TOKEN, CONFIRM_TOKEN, UNSUBSCRIBE_TOKEN
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Status, Subscription
from tests.boundary import unlimited_client
from tests.fakes.twilio import twilio_signature
from tests.helpers import bearer, phone, subscription_body

ORIGIN = "https://shop.example"
MARK = "MARK4242"


@pytest.fixture
async def publishable(runtime: Runtime) -> str:
    async with db.transaction(runtime.sessions) as session:
        return await auth.create_key(session, "page", [], origins=[ORIGIN])


def widget_body(**overrides: Any) -> dict[str, Any]:
    body = subscription_body(channel="email", contact="ann@mailbox.example")
    body.pop("customer_id")
    return {**body, **overrides}


HOSTILE_ORIGINS = [
    f"https://{MARK}.example",
    f"https://shop.example.{MARK}.example",
    f"https://shop.example@{MARK}.example",
    f"https://shop.example/{MARK}",
    f"https://shop.example:{MARK}",
    f"https://shop.example:99999{MARK}",
    f"https://[{MARK}]",
    f"javascript:{MARK}",
    f"null{MARK}",
    f"https://{MARK}" + "a" * 5000 + ".example",
    f"https://xn--{MARK}.example",
    f"https://{MARK}\u0085.example",
    "https://shop.example\u00a0",
    f"{MARK}\x7f",
]


@pytest.mark.parametrize("origin", HOSTILE_ORIGINS, ids=range(len(HOSTILE_ORIGINS)))
async def test_a_hostile_origin_is_refused_never_granted_or_echoed(
    client: httpx.AsyncClient, publishable: str, origin: str
) -> None:
    headers = {**bearer(publishable), "Origin": origin.encode("utf-8")}
    response = await client.post("/v1/subscriptions", json=widget_body(), headers=headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    preflight = await client.options(
        "/v1/subscriptions",
        headers={"Origin": headers["Origin"], "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    for answer in (response, preflight):
        assert "access-control-allow-origin" not in answer.headers
        assert MARK not in answer.text and MARK not in json.dumps(dict(answer.headers))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer pk_",
        f"Bearer pk_{MARK}",
        f"Bearer pk_{'x' * 10_000}",
        f"Basic {MARK}",
        f"pk_{MARK}",
        "Bearer \u00e9\u00e9",
        "Bearer",
        "",
    ],
)
async def test_a_hostile_key_is_unauthorized(client: httpx.AsyncClient, authorization: str) -> None:
    headers = {"Origin": ORIGIN, "Authorization": authorization.encode("utf-8")}
    response = await client.post("/v1/subscriptions", json=widget_body(), headers=headers)
    assert response.status_code in (401, 403), response.text
    assert response.json()["error"]["code"] in ("unauthorized", "forbidden")
    assert MARK not in response.text


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("product", "name"), f"{MARK}\x00"),
        (("name",), f"{MARK}\ud800"),
        (("source",), f"{MARK}\u2028"),
        (("contact",), f"{MARK}@@mailbox.example"),
        (("locale",), f"{MARK}\n"),
        (("sku",), f"{MARK} x"),
        (("consent", "text_version"), f"{MARK}\x1b"),
    ],
)
async def test_a_publishable_request_refuses_what_storage_cannot_hold(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime, path: tuple[str, ...], value: str
) -> None:
    body = widget_body()
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    headers = {**bearer(publishable), "Origin": ORIGIN, "content-type": "application/json"}
    response = await client.post("/v1/subscriptions", content=json.dumps(body), headers=headers)
    assert response.status_code == 422
    assert ".".join(path) in [d["field"] for d in response.json()["error"]["details"]]
    assert MARK not in response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 0


async def test_a_forged_or_foreign_confirmation_token_confirms_nothing(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime
) -> None:
    made = await client.post(
        "/v1/subscriptions",
        json=widget_body(),
        headers={**bearer(publishable), "Origin": ORIGIN},
    )
    sub_id = made.json()["id"]
    import uuid

    subject = uuid.UUID(sub_id)
    good = runtime.keys.tokens.sign(CONFIRM_TOKEN, subject)
    flipped = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    tokens = [
        runtime.keys.tokens.sign(UNSUBSCRIBE_TOKEN, subject),  # another purpose
        runtime.keys.tokens.sign(CLICK_TOKEN, subject),
        flipped,
        good[:-1],
        good + "A",
        MARK * 6,
        "%00" + MARK,
        "." * 44,
        "\u00e9" * 44,
        "A" * 10_000,
    ]
    for token in tokens:
        for method in ("GET", "POST"):
            html = await client.request(method, f"/c/{token}")
            assert html.status_code == 404, (method, token)
            assert MARK not in html.text
            as_json = await client.request(
                method, f"/c/{token}", headers={"accept": "application/json"}
            )
            assert as_json.status_code == 404
            assert as_json.json()["error"]["code"] == "not_found"
    async with runtime.sessions() as session:
        status = await session.scalar(select(Subscription.status))
    assert status == Status.PENDING


async def test_hostile_sms_replies_confirm_nothing_and_fail_nothing(
    runtime: Runtime, api_keys: dict[str, str]
) -> None:
    import dataclasses

    settings = dataclasses.replace(
        runtime.settings,
        opt_in=OptInSettings(double_opt_in_channels="sms"),
        twilio=TwilioSettings(twilio_account_sid="AC" + "0" * 32, twilio_auth_token="t"),
    )
    async with unlimited_client(dataclasses.replace(runtime, settings=settings)) as client:
        made = await client.post(
            "/v1/subscriptions",
            json=subscription_body(contact=phone(1)),
            headers=bearer(api_keys["all"]),
        )
        assert made.json()["status"] == "pending"
        replies = [
            "１２３４５６",  # full-width digits
            "١٢٣٤٥٦",  # Arabic-Indic digits
            "12345",
            "1234567",
            "000000\x00",
            f"{MARK}",
            "",
            " " * 1000,
            "9" * 100_000,
        ]
        senders = [phone(1), f"{MARK}", "", "+" + "9" * 300]
        for sender in senders:
            for body in replies:
                params = {"From": sender, "Body": body}
                path = "/v1/providers/twilio/inbound"
                signature = twilio_signature("t", "http://127.0.0.1:8000" + path, params)
                response = await client.post(
                    path,
                    content=urlencode(params).encode(),
                    headers={
                        "content-type": "application/x-www-form-urlencoded",
                        "x-twilio-signature": signature,
                    },
                )
                assert response.status_code == 200, (sender, body[:10])
                assert MARK not in response.text
        async with runtime.sessions() as session:
            status = await session.scalar(select(Subscription.status))
        assert status == Status.PENDING
