"""A sender's places in flight (WeChat's connections, the SMTP pool, Twilio's concurrency)
go to calls that can start. A message whose in-flight mark is still being committed waits
for that commit without holding a place: with several claims in one worker, another
claim's messages use the place meanwhile (held, the place stood idle for a commit)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import pytest

from backinstock.senders.base import OutgoingMessage, Sender, SendResult
from backinstock.senders.smtp_email import SmtpEmailSender
from backinstock.senders.twilio_sms import TwilioSmsSender
from backinstock.senders.wechat import AccessTokenCache, WeChatSender
from tests.fakes.smtp import FakeSMTP
from tests.fakes.twilio import FakeTwilio
from tests.fakes.wechat import FakeWeChat
from tests.senders import test_smtp_email, test_twilio_sms, test_wechat

JOIN_TIMEOUT = 60  # a deadline against a hang, not a measure


class MarkInCommit:
    """A journal in which the first message's mark rides in a commit not yet over."""

    def __init__(self, held: OutgoingMessage, others: int) -> None:
        self.held = held
        self.commit_over = asyncio.Event()
        self.others_sent = asyncio.Event()
        self._others = others
        self.sent: list[uuid.UUID] = []

    def marking(self, message: OutgoingMessage) -> asyncio.Event | None:
        if message.notification_id == self.held.notification_id and not self.commit_over.is_set():
            return self.commit_over
        return None

    async def call(
        self, message: OutgoingMessage, send: Callable[[], Awaitable[SendResult]]
    ) -> SendResult | None:
        assert self.marking(message) is None, "started while its mark was being committed"
        result = await send()
        self.sent.append(message.notification_id)
        if len(self.sent) == self._others:
            self.others_sent.set()
        return result

    async def call_idempotent(
        self,
        messages: list[OutgoingMessage],
        send: Callable[[list[OutgoingMessage]], Awaitable[list[SendResult]]],
    ) -> list[SendResult]:
        return await send(messages)


async def _waits_off_its_place(sender: Sender, messages: list[OutgoingMessage]) -> None:
    journal = MarkInCommit(messages[0], others=len(messages) - 1)
    sending = asyncio.create_task(sender.send_batch(messages, journal))
    async with asyncio.timeout(JOIN_TIMEOUT):
        await journal.others_sent.wait()  # one place, and the held message queued first
    assert journal.sent == [m.notification_id for m in messages[1:]]
    journal.commit_over.set()
    async with asyncio.timeout(JOIN_TIMEOUT):
        results = await sending
    assert len(results) == len(messages) and journal.sent[-1] == messages[0].notification_id


Made = tuple[Sender, list[OutgoingMessage], list[Callable[[], Awaitable[None]]]]


def _wechat(stack: contextlib.ExitStack) -> Made:
    fake = stack.enter_context(FakeWeChat())
    settings = test_wechat.settings_for(fake)
    tokens = AccessTokenCache(settings)
    sender = WeChatSender(settings, tokens, concurrency=1)
    return sender, test_wechat.batch(3), [sender.close, tokens.close]


def _smtp(stack: contextlib.ExitStack) -> Made:
    fake = stack.enter_context(FakeSMTP())
    sender = SmtpEmailSender(test_smtp_email._settings(fake.port), pool_size=1)
    return sender, test_smtp_email._batch(3), [sender.close]


def _twilio(stack: contextlib.ExitStack) -> Made:
    fake = stack.enter_context(FakeTwilio())
    sender = TwilioSmsSender(test_twilio_sms._settings(fake), None, concurrency=1)
    return sender, test_twilio_sms._messages(3), [sender.close]


@pytest.mark.parametrize("make", [_wechat, _smtp, _twilio], ids=["wechat", "smtp", "twilio"])
async def test_a_message_whose_mark_is_in_commit_leaves_its_place_to_others(
    make: Callable[[contextlib.ExitStack], Made],
) -> None:
    with contextlib.ExitStack() as stack:
        sender, messages, closers = make(stack)
        try:
            await _waits_off_its_place(sender, messages)
        finally:
            for close in closers:
                await close()
