"""The sender interface every channel implements, and how results are classified."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class Outcome(enum.StrEnum):
    SENT = "sent"
    TRANSIENT = "transient"  # try again later (timeouts, 429, 5xx)
    PERMANENT = "permanent"  # this contact will not work (invalid, opted out, refused)


@dataclass(frozen=True)
class OutgoingMessage:
    notification_id: uuid.UUID
    channel: str
    to: str  # the plaintext contact: decrypted just before sending, never stored or logged
    to_masked: str
    text: str
    subject: str | None = None
    html: str | None = None
    link: str | None = None
    unsubscribe_url: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # channel-specific fields (WeChat)


@dataclass(frozen=True)
class SendResult:
    notification_id: uuid.UUID
    outcome: Outcome
    provider_id: str | None = None
    error: str | None = None  # a provider code or short reason, never the contact
    # Not sent now: the provider's own records show an earlier attempt got through.
    already_sent: bool = False


class Journal(Protocol):
    """Where a sender reports each provider call as it happens (the dispatcher's recorder).

    ``call`` wraps one call that cannot be taken back: the journal first records that it
    has started (and may refuse: the worker is stopping, or the claim was lost), then
    records its result. ``call_idempotent`` wraps a write that is harmless to repeat (the
    dev outbox), which needs no record before it, only after.
    """

    async def call(
        self, message: OutgoingMessage, send: Callable[[], Awaitable[SendResult]]
    ) -> SendResult | None: ...

    async def call_idempotent(
        self,
        messages: list[OutgoingMessage],
        send: Callable[[list[OutgoingMessage]], Awaitable[list[SendResult]]],
    ) -> list[SendResult]: ...


class Unrecorded:
    """No journal: every call goes ahead and nothing is recorded (a sender used directly)."""

    async def call(
        self, message: OutgoingMessage, send: Callable[[], Awaitable[SendResult]]
    ) -> SendResult | None:
        return await send()

    async def call_idempotent(
        self,
        messages: list[OutgoingMessage],
        send: Callable[[list[OutgoingMessage]], Awaitable[list[SendResult]]],
    ) -> list[SendResult]:
        return await send(messages)


UNRECORDED = Unrecorded()


class Sender(Protocol):
    """Sends a batch, reporting every provider call to ``journal`` as it happens; returns
    the results of the messages it sent (a message the journal refused has none).

    ``marks_starts``: whether its calls go through ``Journal.call``, which records each
    start before the call. A sender whose writes are harmless to repeat (the dev outbox,
    ``Journal.call_idempotent``) records only results, so a claim marks none of its
    messages in flight ahead: such a mark would be a row written for nothing, and a doubt
    after a crash about a message that needs none."""

    channel: str
    marks_starts: bool

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]: ...


@runtime_checkable
class Reconciler(Protocol):
    """A sender whose provider can say whether it already accepted a message."""

    async def find_sent(self, message: OutgoingMessage, since: datetime) -> str | None:
        """The provider's id for ``message`` if it was accepted at or after ``since``;
        None if it was not. Raises when the provider cannot be asked right now."""
        ...
