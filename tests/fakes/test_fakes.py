"""Prove the fakes speak the real wire protocols by driving them with real clients."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from .httpserver import BackgroundServer
from .smtp import FakeSMTP
from .twilio import FakeTwilio, num_segments, twilio_client_for
from .wechat import FakeWeChat

FROM = "+15005550006"
TO = "+14155550100"


# --------------------------------------------------------------------- fixtures
@pytest.fixture
def twilio_fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def twilio_async(twilio_fake: FakeTwilio) -> AsyncIterator[Client]:
    # aiohttp wants its session created inside the running loop.
    http_client = AsyncTwilioHttpClient()
    yield twilio_client_for(twilio_fake, http_client)
    await http_client.close()


@pytest.fixture
def wechat_fake() -> Iterator[FakeWeChat]:
    with FakeWeChat(refused_users={"o-refuser"}) as fake:
        yield fake


@pytest.fixture
async def wechat_http(wechat_fake: FakeWeChat) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=wechat_fake.base_url) as client:
        yield client


def _email(to: str = "shopper@example.com", subject: str = "Back in stock") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "shop@example.com", to, subject
    msg.set_content("Your item is back.")
    return msg


async def _token(client: httpx.AsyncClient, fake: FakeWeChat, **extra: object) -> str:
    body = {"grant_type": "client_credential", "appid": fake.appid, "secret": fake.secret, **extra}
    token: str = (await client.post("/cgi-bin/stable_token", json=body)).json()["access_token"]
    return token


async def _subscribe(
    client: httpx.AsyncClient, token: str, touser: str = "o-user"
) -> httpx.Response:
    body = {
        "touser": touser,
        "template_id": "tmpl-1",
        "page": "pages/item?id=1",
        "data": {"thing1": {"value": "Blue mug"}},
        "miniprogram_state": "formal",
        "lang": "en_US",
    }
    return await client.post(
        "/cgi-bin/message/subscribe/send", params={"access_token": token}, json=body
    )


# ------------------------------------------------------------------- httpserver
def test_background_server_serves_then_releases_port() -> None:
    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    server = BackgroundServer(Starlette(routes=[Route("/ping", ping)]))
    with server:
        port = server.port
        assert httpx.get(f"{server.base_url}/ping").text == "pong"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


# ----------------------------------------------------------------------- twilio
def test_twilio_sync_sdk_send_is_recorded(twilio_fake: FakeTwilio) -> None:
    client = twilio_client_for(twilio_fake)
    msg = client.messages.create(
        to=TO, from_=FROM, body="Back in stock!", status_callback="https://app.test/twilio/status"
    )
    assert msg.sid.startswith("SM") and len(msg.sid) == 34
    assert (msg.status, msg.to, msg.from_, msg.num_segments) == ("queued", TO, FROM, "1")
    [sent] = twilio_fake.messages
    assert (sent.sid, sent.body, sent.status_callback) == (
        msg.sid,
        "Back in stock!",
        "https://app.test/twilio/status",
    )


@pytest.mark.asyncio
async def test_twilio_async_sdk_with_messaging_service(
    twilio_fake: FakeTwilio, twilio_async: Client
) -> None:
    msg = await twilio_async.messages.create_async(
        to=TO, messaging_service_sid="MG" + "a" * 32, body="ж" * 71
    )
    assert (msg.status, msg.from_, msg.num_segments) == ("accepted", None, "2")
    assert twilio_fake.messages[0].messaging_service_sid == "MG" + "a" * 32


def test_twilio_wrong_credentials_are_401(twilio_fake: FakeTwilio) -> None:
    client = twilio_client_for(twilio_fake)
    client.password = "wrong"
    client.auth = (client.username, "wrong")
    with pytest.raises(TwilioRestException) as err:
        client.messages.create(to=TO, from_=FROM, body="x")
    assert (err.value.status, err.value.code) == (401, 20003)
    assert twilio_fake.messages == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("attr", "code"), [("invalid_numbers", 21211), ("opted_out_numbers", 21610)]
)
async def test_twilio_recipient_errors(
    twilio_fake: FakeTwilio, twilio_async: Client, attr: str, code: int
) -> None:
    getattr(twilio_fake, attr).add(TO)
    with pytest.raises(TwilioRestException) as err:
        await twilio_async.messages.create_async(to=TO, from_=FROM, body="x")
    assert (err.value.status, err.value.code) == (400, code)
    assert twilio_fake.error_counts[code] == 1 and twilio_fake.messages == []


@pytest.mark.parametrize(("share", "status", "code"), [(0.0, 500, 20500), (1.0, 429, 20429)])
def test_twilio_transient_errors(share: float, status: int, code: int) -> None:
    with FakeTwilio(transient_error_rate=1.0, transient_429_share=share) as fake:
        with pytest.raises(TwilioRestException) as err:
            twilio_client_for(fake).messages.create(to=TO, from_=FROM, body="x")
        assert (err.value.status, err.value.code) == (status, code)
        assert fake.messages == [] and fake.attempts == 1


def test_twilio_transient_errors_are_seeded() -> None:
    def outcomes() -> list[int | None]:
        with FakeTwilio(transient_error_rate=0.5, seed=7) as fake:
            client, seen = twilio_client_for(fake), list[int | None]()
            for _ in range(12):
                try:
                    client.messages.create(to=TO, from_=FROM, body="x")
                    seen.append(None)
                except TwilioRestException as exc:
                    seen.append(exc.code)
            assert len(fake.messages) == seen.count(None)
            return seen

    first = outcomes()
    assert first == outcomes() and None in first and set(first) - {None}


@pytest.mark.asyncio
async def test_twilio_rate_limit_and_observed_rate() -> None:
    with FakeTwilio(rate_limit=1, rate_burst=5) as fake:  # slow refill: no timing flake
        http_client = AsyncTwilioHttpClient()
        client = twilio_client_for(fake, http_client)
        results = await asyncio.gather(
            *(client.messages.create_async(to=TO, from_=FROM, body=str(i)) for i in range(8)),
            return_exceptions=True,
        )
        await http_client.close()
    errors = [r for r in results if isinstance(r, TwilioRestException)]
    assert len(fake.messages) == 5 and len(errors) == 3
    assert {(e.status, e.code) for e in errors} == {(429, 20429)}
    assert fake.max_observed_rate == 8 and fake.rate.throttled == 3


def test_twilio_signature_and_callback_params(twilio_fake: FakeTwilio) -> None:
    msg = twilio_client_for(twilio_fake).messages.create(to=TO, from_=FROM, body="x")
    params = twilio_fake.status_callback_params(twilio_fake.messages[0], "undelivered", 30003)
    url = "https://app.test/twilio/status?tenant=1"
    signature = twilio_fake.sign(url, params)
    assert params["MessageSid"] == msg.sid and params["ErrorCode"] == "30003"
    assert RequestValidator(twilio_fake.auth_token).validate(url, params, signature)
    assert not RequestValidator("other-token").validate(url, params, signature)


def test_num_segments() -> None:
    assert [
        num_segments(b)
        for b in ("a" * 160, "a" * 161, "€" * 80, "é" * 70, "ü" * 161, "😀" * 35, "😀" * 36)
    ] == [1, 2, 1, 1, 2, 1, 2]


# ----------------------------------------------------------------------- wechat
@pytest.mark.asyncio
async def test_wechat_token_and_send(
    wechat_fake: FakeWeChat, wechat_http: httpx.AsyncClient
) -> None:
    token = await _token(wechat_http, wechat_fake)
    assert await _token(wechat_http, wechat_fake) == token  # stable: same live token
    reply = (await _subscribe(wechat_http, token)).json()
    assert (reply["errcode"], reply["errmsg"]) == (0, "ok") and isinstance(reply["msgid"], int)
    [sent] = wechat_fake.messages
    assert (sent.msgid, sent.touser, sent.data) == (
        reply["msgid"],
        "o-user",
        {"thing1": {"value": "Blue mug"}},
    )
    assert wechat_fake.stable_token_calls == 2


@pytest.mark.asyncio
@pytest.mark.parametrize(("field", "code"), [("appid", 40013), ("secret", 40125)])
async def test_wechat_bad_credentials(
    wechat_http: httpx.AsyncClient, wechat_fake: FakeWeChat, field: str, code: int
) -> None:
    body = {
        "grant_type": "client_credential",
        "appid": wechat_fake.appid,
        "secret": wechat_fake.secret,
        field: "wrong",
    }
    reply = await wechat_http.post("/cgi-bin/stable_token", json=body)
    assert reply.status_code == 200 and reply.json()["errcode"] == code


@pytest.mark.asyncio
async def test_wechat_token_lifecycle(
    wechat_fake: FakeWeChat, wechat_http: httpx.AsyncClient
) -> None:
    assert (await _subscribe(wechat_http, "")).json()["errcode"] == 41001
    assert (await _subscribe(wechat_http, "bogus")).json()["errcode"] == 40001
    old = await _token(wechat_http, wechat_fake)
    wechat_fake.expire_tokens()
    assert (await _subscribe(wechat_http, old)).json()["errcode"] == 42001
    fresh = await _token(wechat_http, wechat_fake)
    assert fresh != old and (await _subscribe(wechat_http, fresh)).json()["errcode"] == 0
    forced = await _token(wechat_http, wechat_fake, force_refresh=True)
    assert forced != fresh and (await _subscribe(wechat_http, fresh)).json()["errcode"] == 40001
    assert wechat_fake.stable_token_calls == 3


@pytest.mark.asyncio
async def test_wechat_refusal_and_transients(
    wechat_fake: FakeWeChat, wechat_http: httpx.AsyncClient
) -> None:
    token = await _token(wechat_http, wechat_fake)
    refused = (await _subscribe(wechat_http, token, touser="o-refuser")).json()
    assert refused["errcode"] == 43101 and refused["errmsg"].startswith("user refuse")
    wechat_fake.transient_error_rate = 1.0
    system = await _subscribe(wechat_http, token)
    assert system.status_code == 200 and system.json()["errcode"] == -1
    wechat_fake.transient_http_share = 1.0
    assert (await _subscribe(wechat_http, token)).status_code == 503
    assert wechat_fake.messages == []
    assert wechat_fake.error_counts == {43101: 1, -1: 1, 503: 1}


@pytest.mark.asyncio
async def test_wechat_rate_limit() -> None:
    with FakeWeChat(rate_limit=1, rate_burst=3) as fake:
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            token = await _token(client, fake)
            replies = await asyncio.gather(*(_subscribe(client, token) for _ in range(5)))
    assert sorted(r.json()["errcode"] for r in replies) == [0, 0, 0, 45011, 45011]
    assert len(fake.messages) == 3 and fake.max_observed_rate == 5


@pytest.mark.asyncio
async def test_wechat_payload_validation(
    wechat_fake: FakeWeChat, wechat_http: httpx.AsyncClient
) -> None:
    wechat_fake.valid_template_ids = {"tmpl-1"}
    url, token = "/cgi-bin/message/subscribe/send", await _token(wechat_http, wechat_fake)
    cases = [
        ({"touser": "o", "template_id": "nope", "data": {"a": {"value": "x"}}}, 40037),
        ({"touser": "o", "template_id": "tmpl-1", "data": {"a": "x"}}, 47003),
        ({"template_id": "tmpl-1", "data": {"a": {"value": "x"}}}, 40003),
    ]
    for body, code in cases:
        reply = await wechat_http.post(url, params={"access_token": token}, json=body)
        assert reply.json()["errcode"] == code, body
    assert wechat_fake.messages == []


# ------------------------------------------------------------------------- smtp
@pytest.mark.asyncio
async def test_smtp_send_records_parsed_message() -> None:
    with FakeSMTP() as fake:
        await aiosmtplib.send(_email(), hostname=fake.hostname, port=fake.port)
    [got] = fake.messages
    assert (got.mail_from, got.rcpt_tos) == ("shop@example.com", ["shopper@example.com"])
    assert got.message["Subject"] == "Back in stock" and not got.tls
    assert got.message.get_content().strip() == "Your item is back."
    assert fake.connection_count == 1


@pytest.mark.asyncio
async def test_smtp_connection_reuse_is_countable() -> None:
    with FakeSMTP() as fake:
        async with aiosmtplib.SMTP(hostname=fake.hostname, port=fake.port) as smtp:
            for i in range(3):
                await smtp.send_message(_email(subject=f"n{i}"))
        assert (fake.connection_count, len(fake.messages)) == (1, 3)
        for _ in range(2):
            await aiosmtplib.send(_email(), hostname=fake.hostname, port=fake.port)
        assert (fake.connection_count, len(fake.messages)) == (3, 5)


@pytest.mark.asyncio
async def test_smtp_auth_required() -> None:
    with FakeSMTP(username="mailer", password="s3cret") as fake:
        target: dict[str, Any] = {"hostname": fake.hostname, "port": fake.port}
        with pytest.raises(aiosmtplib.SMTPResponseException) as err:
            await aiosmtplib.send(_email(), **target)
        assert err.value.code == 530
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await aiosmtplib.send(_email(), username="mailer", password="nope", **target)
        await aiosmtplib.send(_email(), username="mailer", password="s3cret", **target)
        async with aiosmtplib.SMTP(**target) as smtp:
            await smtp.auth_plain("mailer", "s3cret")
            await smtp.send_message(_email())
    assert [m.auth_login for m in fake.messages] == ["mailer", "mailer"]


@pytest.mark.asyncio
async def test_smtp_permanent_and_transient_failures() -> None:
    with FakeSMTP(rejected_recipients={"Gone@example.com"}) as fake:
        target: dict[str, Any] = {"hostname": fake.hostname, "port": fake.port}
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await aiosmtplib.send(_email("gone@example.com"), **target)
        assert [r.code for r in refused.value.recipients] == [550]
        errors, _ = await aiosmtplib.send(
            _email(), recipients=["gone@example.com", "ok@example.com"], **target
        )
        assert errors["gone@example.com"].code == 550
        assert fake.messages[0].rcpt_tos == ["ok@example.com"]
        fake.transient_error_rate = 1.0
        with pytest.raises(aiosmtplib.SMTPResponseException) as temp:
            await aiosmtplib.send(_email(), **target)
        assert temp.value.code == 451 and isinstance(temp.value, aiosmtplib.SMTPDataError)
    assert len(fake.messages) == 1 and fake.error_counts == {550: 2, 451: 1}


@pytest.mark.asyncio
async def test_smtp_starttls_with_runtime_certificate() -> None:
    with FakeSMTP(starttls=True, require_starttls=True, username="u", password="p") as fake:
        await aiosmtplib.send(
            _email(),
            hostname=fake.hostname,
            port=fake.port,
            username="u",
            password="p",
            tls_context=fake.client_tls_context(),
        )
    assert fake.messages[0].tls and fake.messages[0].auth_login == "u"
