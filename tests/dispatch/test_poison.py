"""One bad message fails alone, with a reason, and the rest of its batch goes out: a row the
database refuses, and a message that cannot be rendered."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import Notification
from backinstock.identity import CLICK_TOKEN
from backinstock.runtime import Runtime
from backinstock.senders.base import Outcome, OutgoingMessage
from backinstock.senders.models import DevOutboxMessage
from backinstock.senders.outbox import DevOutboxSender
from tests.dispatch.test_journal import _plan


async def test_a_row_the_database_refuses_fails_alone(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 3)
    async with runtime.sessions() as session:
        ids = list(await session.scalars(select(Notification.id)))
    # A message for no notification at all breaks the foreign key on both backends.
    orphan = uuid.uuid4()
    messages = [
        OutgoingMessage(i, "sms", f"+8613800000{n:03d}", "+86 138****0000", text="back")
        for n, i in enumerate([*ids[:2], orphan, ids[2]])
    ]
    sender = DevOutboxSender("sms", runtime.sessions, runtime.keys.cipher)
    results = await sender.send_batch(messages)
    assert Counter((r.outcome, r.error) for r in results) == {
        (Outcome.SENT, None): 3,
        (Outcome.PERMANENT, "outbox:unstorable"): 1,
    }
    assert [r.notification_id for r in results if r.outcome is Outcome.PERMANENT] == [orphan]
    async with runtime.sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(DevOutboxMessage))
    assert stored == 3


async def test_a_message_that_cannot_be_rendered_fails_alone(
    runtime: Runtime,
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 5)
    async with runtime.sessions() as session:
        broken = await session.scalar(select(Notification.id).order_by(Notification.id))
    real_render = dispatch.render

    def render(channel: str, locale: str | None, context: Any, segments: int) -> Any:
        if f"/r/{runtime.keys.tokens.sign(CLICK_TOKEN, broken)}" in context.link:
            raise ValueError("a template that cannot take this message")
        return real_render(channel, locale, context, segments)

    monkeypatch.setattr(dispatch, "render", render)
    outbox = {c: DevOutboxSender(c, runtime.sessions, runtime.keys.cipher) for c in ("sms",)}
    senders = {**outbox, "email": outbox["sms"], "wechat": outbox["sms"]}
    await dispatch.deliver(runtime.sessions, runtime.settings, runtime.keys, senders, None)
    async with runtime.sessions() as session:
        rows = dict(
            (row.id, (row.status, row.error))
            for row in await session.execute(
                select(Notification.id, Notification.status, Notification.error)
            )
        )
    assert rows.pop(broken) == ("failed", "render_failed")
    assert set(rows.values()) == {("sent", None)}
