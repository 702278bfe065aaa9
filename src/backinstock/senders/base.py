"""The sender interface every channel implements, and how results are classified."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


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


class Sender(Protocol):
    channel: str
    # Idempotent senders may be retried after a crash with no risk of a second message;
    # the others' in-doubt messages are marked failed rather than sent twice.
    idempotent: bool

    async def send_batch(self, messages: list[OutgoingMessage]) -> list[SendResult]: ...
