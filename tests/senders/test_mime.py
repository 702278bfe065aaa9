"""render_email writes what the stdlib would, minus its cost: same headers and parts once
parsed, 7-bit, CRLF, and lines within RFC 5322's limits."""

from __future__ import annotations

import uuid
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from backinstock.senders.base import OutgoingMessage
from backinstock.senders.mime import build_email, render_email

FROM = "Shop <shop@shop.example>"
LONG_URL = "https://shop.example/u/" + "u" * 90
CASES: list[dict[str, Any]] = [
    {"text": "张女士，您好：\n「红色T恤 M」已经到货。\n\n退订：" + LONG_URL,
     "subject": "「红色T恤 M」到货了 " * 4, "html": "<p>张女士，您好</p>\n" * 20,
     "unsubscribe_url": LONG_URL},
    {"text": "Item 1 is back", "subject": "Back in stock\n#1", "html": "<p>Item 1</p>",
     "unsubscribe_url": "https://shop.example/u/1"},
    {"text": "a" * 200 + "\n\nb", "subject": "x " * 60, "html": None, "unsubscribe_url": None},
    {"text": "", "subject": None, "html": "", "unsubscribe_url": "https://shop.example/u/2"},
]  # fmt: skip


def _parse(data: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _content(email: EmailMessage, subtype: str) -> str | None:
    part = email.get_body((subtype,))
    return None if part is None else str(part.get_content()).replace("\r\n", "\n")


@pytest.mark.parametrize("fields", CASES)
def test_same_message_as_the_stdlib(fields: dict[str, Any]) -> None:
    message = OutgoingMessage(uuid.uuid4(), "email", "shopper1@example.com", "s***", **fields)
    data, message_id = render_email(message, FROM, "shop.example")
    fast, slow = _parse(data), build_email(message, FROM, "shop.example")
    for name in ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert fast[name] == slow[name]
    assert fast["Message-ID"] == message_id and fast["Date"] and fast["MIME-Version"] == "1.0"
    assert fast.get_content_type() == slow.get_content_type()
    for subtype in ("plain", "html"):
        assert _content(fast, subtype) == _content(slow, subtype)
    assert not any(part.defects for part in fast.walk())
    assert data.isascii() and b"\n" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    # Only an unbreakable URL may pass 78 characters, and nothing 998.
    assert all(len(line) <= 78 or LONG_URL.encode() in line for line in lines)
    assert max(len(line) for line in lines) <= 998


def test_unusual_addresses_go_through_the_stdlib() -> None:
    quoted = OutgoingMessage(uuid.uuid4(), "email", '"a b"@example.com', "***", text="hi")
    assert _parse(render_email(quoted, FROM, "shop.example")[0])["To"] == '"a b"@example.com'
    utf8 = OutgoingMessage(uuid.uuid4(), "email", "顾客@例子.广告", "***", text="hi")
    data, _ = render_email(utf8, FROM, "shop.example", utf8=True)
    assert "顾客@例子.广告".encode() in data
    broken = OutgoingMessage(uuid.uuid4(), "email", "a@example.com\r\nBcc: x@y.z", "***", text="")
    with pytest.raises(ValueError):
        render_email(broken, FROM, "shop.example")


@pytest.mark.parametrize("to", ["shopper1@example.com", '"a b"@example.com'])
def test_message_id_is_the_same_on_every_attempt(to: str) -> None:
    """A resend after a crash carries the first attempt's Message-ID (both writer paths)."""
    notification_id = uuid.uuid4()
    message = OutgoingMessage(notification_id, "email", to, "***", text="hi", subject="Back")
    first = render_email(message, FROM, "shop.example")
    again = render_email(message, FROM, "shop.example")
    assert first[1] == again[1] == f"<{notification_id}@shop.example>"
    assert _parse(first[0])["Message-ID"] == _parse(again[0])["Message-ID"] == first[1]
    other = OutgoingMessage(uuid.uuid4(), "email", to, "***", text="hi", subject="Back")
    assert render_email(other, FROM, "shop.example")[1] != first[1]
