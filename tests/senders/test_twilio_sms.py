"""TwilioSmsSender through the official SDK against FakeTwilio on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from twilio.base.exceptions import TwilioRestException

from backinstock.config import TwilioSettings
from backinstock.senders.base import Outcome, OutgoingMessage, SendResult
from backinstock.senders.twilio_sms import TwilioSmsSender, classify
from tests.fakes.twilio import FakeTwilio, SlowFakeTwilio

FROM = "+15005550006"
SERVICE_SID = "MG" + "b" * 32
CALLBACK = "https://app.test/webhooks/twilio/status"


def _settings(fake: FakeTwilio, **overrides: str) -> TwilioSettings:
    settings = TwilioSettings(
        twilio_account_sid=fake.account_sid,
        twilio_auth_token=fake.auth_token,
        twilio_from=FROM,
        twilio_api_base=fake.base_url,
    )
    return settings.model_copy(update=overrides)


def _messages(count: int, start: int = 0) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(
            notification_id=uuid.uuid4(),
            channel="sms",
            to=f"+1415555{i:04d}",
            to_masked=f"+1415*****{i % 100:02d}",
            text=f"Blue mug is back in stock #{i}",
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
async def sender(fake: FakeTwilio) -> AsyncIterator[TwilioSmsSender]:
    s = TwilioSmsSender(_settings(fake), CALLBACK)
    yield s
    await s.close()


def _outcomes(results: list[SendResult]) -> Counter[Outcome]:
    return Counter(r.outcome for r in results)


async def test_batch_is_sent_with_from_body_and_status_callback(
    fake: FakeTwilio, sender: TwilioSmsSender
) -> None:
    messages = _messages(50)
    results = await sender.send_batch(messages)

    assert [r.notification_id for r in results] == [m.notification_id for m in messages]
    assert _outcomes(results) == {Outcome.SENT: 50}
    recorded = {m.to: m for m in fake.messages}
    assert len(fake.messages) == len(recorded) == 50
    for message, result in zip(messages, results, strict=True):
        got = recorded[message.to]
        assert (got.sid, got.from_, got.messaging_service_sid) == (result.provider_id, FROM, None)
        # The notification id rides in the callback URL: a report settles an in-doubt send.
        callback = f"{CALLBACK}?n={message.notification_id}"
        assert (got.body, got.status_callback) == (message.text, callback)
        assert result.error is None


async def test_empty_batch_sends_nothing(fake: FakeTwilio, sender: TwilioSmsSender) -> None:
    assert await sender.send_batch([]) == []
    assert fake.attempts == 0


async def test_messaging_service_wins_over_from_and_callback_is_optional(
    fake: FakeTwilio,
) -> None:
    sender = TwilioSmsSender(_settings(fake, twilio_messaging_service_sid=SERVICE_SID), None)
    try:
        [result] = await sender.send_batch(_messages(1))
    finally:
        await sender.close()
    [got] = fake.messages
    assert (result.outcome, result.provider_id) == (Outcome.SENT, got.sid)
    assert (got.messaging_service_sid, got.from_, got.status_callback) == (SERVICE_SID, None, None)
    assert "From" not in got.params and "StatusCallback" not in got.params


async def test_invalid_and_opted_out_numbers_are_permanent_and_never_logged(
    fake: FakeTwilio, sender: TwilioSmsSender, caplog: pytest.LogCaptureFixture
) -> None:
    invalid, opted_out, fine = _messages(3)
    fake.invalid_numbers.add(invalid.to)
    fake.opted_out_numbers.add(opted_out.to)
    caplog.set_level(logging.DEBUG)  # the SDK's and aiohttp's own logs too

    with structlog.testing.capture_logs() as logs:
        results = await sender.send_batch([invalid, opted_out, fine])

    assert [(r.outcome, r.error) for r in results] == [
        (Outcome.PERMANENT, "twilio:21211"),
        (Outcome.PERMANENT, "twilio:21610"),
        (Outcome.SENT, None),
    ]
    assert [m.to for m in fake.messages] == [fine.to]
    assert {entry["error"] for entry in logs} == {"twilio:21211", "twilio:21610"}
    everything_logged = repr(logs) + caplog.text
    for message in (invalid, opted_out, fine):
        assert message.to not in everything_logged
        assert message.text not in everything_logged


async def test_transient_errors_are_retryable_and_nothing_is_sent_twice() -> None:
    with FakeTwilio(transient_error_rate=0.3, seed=11) as fake:
        sender = TwilioSmsSender(_settings(fake), CALLBACK)
        try:
            messages = _messages(100)
            first = await sender.send_batch(messages)
            transient = [r for r in first if r.outcome is Outcome.TRANSIENT]
            assert 10 <= len(transient) <= 50  # ~30 %, reproducible with the seed
            assert _outcomes(first)[Outcome.SENT] == 100 - len(transient)
            assert {r.error for r in transient} <= {"twilio:20429", "twilio:20500"}
            sent_first = {m.to for m, r in zip(messages, first, strict=True) if r.provider_id}
            assert {m.to for m in fake.messages} == sent_first
            assert fake.attempts == 100  # one request per message: the SDK did not retry

            # What the dispatcher does next: resend only the transient ones.
            fake.transient_error_rate = 0.0
            failed_ids = {r.notification_id for r in transient}
            retry = [m for m in messages if m.notification_id in failed_ids]
            second = await sender.send_batch(retry)
        finally:
            await sender.close()
    assert _outcomes(second) == {Outcome.SENT: len(retry)}
    assert Counter(m.to for m in fake.messages) == Counter({m.to: 1 for m in messages})


async def test_wrong_auth_token_is_transient_not_the_shoppers_fault(fake: FakeTwilio) -> None:
    sender = TwilioSmsSender(_settings(fake, twilio_auth_token="rotated-away"), CALLBACK)
    try:
        results = await sender.send_batch(_messages(5))
    finally:
        await sender.close()
    assert {(r.outcome, r.error) for r in results} == {(Outcome.TRANSIENT, "twilio:20003")}
    assert fake.messages == []


async def test_concurrency_is_bounded_and_the_client_is_reused() -> None:
    with SlowFakeTwilio(delay=0.05) as fake:
        sender = TwilioSmsSender(_settings(fake), None, concurrency=5)
        try:
            results = await sender.send_batch(_messages(30))
            assert fake.max_in_flight == 5
            connections = set(fake.client_ports)
            assert len(connections) == 5  # one keep-alive connection per slot
            # Batches running side by side (worker actors share a loop) share the bound.
            more = await asyncio.gather(
                sender.send_batch(_messages(10, start=30)),
                sender.send_batch(_messages(10, start=40)),
            )
        finally:
            await sender.close()
    assert _outcomes(results + more[0] + more[1]) == {Outcome.SENT: 50}
    assert fake.max_in_flight == 5
    assert fake.client_ports == connections  # later batches rode the same connections
    assert len(fake.messages) == 50


async def test_a_hung_request_times_out_as_transient() -> None:
    with SlowFakeTwilio(delay=1.0) as fake:
        sender = TwilioSmsSender(_settings(fake), None, request_timeout=0.2)
        try:
            [result] = await sender.send_batch(_messages(1))
        finally:
            await sender.close()
    assert (result.outcome, result.error) == (Outcome.TRANSIENT, "twilio:timeout")


async def test_connection_refused_is_transient() -> None:
    with FakeTwilio() as fake:
        settings = _settings(fake)  # its port is closed once the server stops
    sender = TwilioSmsSender(settings, None)
    try:
        results = await sender.send_batch(_messages(2))
    finally:
        await sender.close()
    assert {(r.outcome, r.error) for r in results} == {(Outcome.TRANSIENT, "twilio:connection")}


async def test_close_then_send_builds_a_new_client(
    fake: FakeTwilio, sender: TwilioSmsSender
) -> None:
    await sender.send_batch(_messages(1))
    await sender.close()
    [result] = await sender.send_batch(_messages(1, start=1))
    assert result.outcome is Outcome.SENT
    assert len(fake.messages) == 2


@pytest.mark.parametrize(
    ("status", "code", "outcome", "error"),
    [
        (400, 21614, Outcome.PERMANENT, "twilio:21614"),  # not a mobile number
        (400, 21612, Outcome.PERMANENT, "twilio:21612"),
        (400, 21408, Outcome.PERMANENT, "twilio:21408"),
        (400, 21617, Outcome.PERMANENT, "twilio:21617"),
        (400, 99999, Outcome.PERMANENT, "twilio:99999"),  # any other 4xx
        (404, None, Outcome.PERMANENT, "twilio:404"),
        (400, 14107, Outcome.TRANSIENT, "twilio:14107"),  # rate limit answered as 400
        (400, 21611, Outcome.TRANSIENT, "twilio:21611"),  # sender's queue full
        (429, 20429, Outcome.TRANSIENT, "twilio:20429"),
        (401, 20003, Outcome.TRANSIENT, "twilio:20003"),
        (401, None, Outcome.TRANSIENT, "twilio:401"),
        (500, 20500, Outcome.TRANSIENT, "twilio:20500"),
        (503, None, Outcome.TRANSIENT, "twilio:503"),
    ],
)
def test_classification(status: int, code: int | None, outcome: Outcome, error: str) -> None:
    exc = TwilioRestException(status, "https://api.twilio.com/...", "msg", code, "POST")
    assert classify(exc) == (outcome, error)


def test_unexpected_errors_are_transient() -> None:
    assert classify(ValueError("bad json")) == (Outcome.TRANSIENT, "twilio:unexpected")
    assert classify(TimeoutError()) == (Outcome.TRANSIENT, "twilio:timeout")


def test_sms_sender_serves_the_sms_channel() -> None:
    assert TwilioSmsSender.channel == "sms"
    with pytest.raises(ValueError, match="concurrency"):
        TwilioSmsSender(TwilioSettings(), None, concurrency=0)
