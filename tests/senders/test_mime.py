"""render_email: the stdlib's headers, bodies equal to the stdlib's, 7-bit, CRLF, lines
within RFC 5322's limits, and no way for a product name to add a header or a body line.

The hypothesis fuzzing is in test_mime_properties.py; mime_check.py runs a hostile corpus
on every CPython of the admitted range found on this host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest

from backinstock.senders.base import OutgoingMessage
from backinstock.senders.mime import check_wire_form, header_text, render_email
from tests.senders import mime_check

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
    {"text": "nul\x00 and\rbare\x0bcontrols", "subject": "=?utf-8?b?SGk=?= " * 9,
     "html": None, "unsubscribe_url": None},
]  # fmt: skip


def parse(data: bytes) -> EmailMessage:
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def stdlib_email(message: OutgoingMessage, subject: str | None) -> EmailMessage:
    """The same message built by the stdlib alone: the reference for everything but the
    Subject, whose encoded words the stdlib would decode (``subject`` is what to set)."""
    email = EmailMessage(policy=policy.default.clone(cte_type="7bit"))
    email["From"] = FROM
    email["To"] = message.to
    if subject is not None:
        email["Subject"] = subject
    if message.unsubscribe_url:
        email["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
        email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


def content(email: EmailMessage, subtype: str) -> str | None:
    part = email.get_body((subtype,))
    return None if part is None else str(part.get_content()).replace("\r\n", "\n")


def expected_names(message: OutgoingMessage) -> list[str]:
    names = ["From", "To", "Subject", "Date", "Message-ID"]
    if message.subject is None:
        names.remove("Subject")
    if message.unsubscribe_url:
        names += ["List-Unsubscribe", "List-Unsubscribe-Post"]
    names += ["MIME-Version", "Content-Type"]
    return names if message.html is not None else [*names, "Content-Transfer-Encoding"]


@pytest.mark.parametrize("fields", CASES)
def test_same_message_as_the_stdlib(fields: dict[str, Any]) -> None:
    message = OutgoingMessage(uuid.uuid4(), "email", "shopper1@example.com", "s***", **fields)
    data, message_id = render_email(message, FROM, "shop.example")
    ours = parse(data)
    subject = None if message.subject is None else header_text(message.subject)
    reference = stdlib_email(message, subject)
    for name in ("From", "To", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert ours[name] == reference[name]
    assert ours["Subject"] == subject
    assert list(ours.keys()) == expected_names(message)
    assert ours["Message-ID"] == message_id and ours["Date"] and ours["MIME-Version"] == "1.0"
    assert ours.get_content_type() == reference.get_content_type()
    for subtype in ("plain", "html"):
        assert content(ours, subtype) == content(reference, subtype)
    assert not any(part.defects for part in ours.walk())
    assert data.isascii() and b"\n" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    # Only an unbreakable URL may pass 78 characters, and nothing 998.
    assert all(len(line) <= 78 or LONG_URL.encode() in line for line in lines)
    assert max(len(line) for line in lines) <= 998


HOSTILE = "=?utf-8?q?Deal=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0APHISHING?= x"


@pytest.mark.parametrize("to", ["shopper1@example.com", '"a b"@example.com', "顾客@例子.广告"])
def test_an_encoded_line_break_in_the_subject_adds_no_header(to: str) -> None:
    """The product name of issue 10: an RFC 2047 word carrying CRLF. It stays literal text
    of the Subject on every path (plain, quoted and UTF-8 addresses)."""
    message = OutgoingMessage(
        uuid.uuid4(), "email", to, "***", text="hi", subject=f"「{HOSTILE}」到货了"
    )
    data, _ = render_email(message, FROM, "shop.example", utf8=not to.isascii())
    head = data.partition(b"\r\n\r\n")[0]
    assert b"Reply-To" not in head and b"PHISHING" not in data
    parsed = parse(data)
    assert list(parsed.keys()) == expected_names(message)
    assert parsed["Subject"] == f"「{HOSTILE}」到货了"
    assert parsed.get_content().replace("\r\n", "\n") == "hi\n"


def test_line_breaks_and_controls_in_a_subject_become_spaces() -> None:
    subject = "Deal\r\nReply-To: x@evil.example\r\n\r\nbody\x00\u2028end\ud800"
    message = OutgoingMessage(
        uuid.uuid4(), "email", "a@example.com", "***", text="hi", subject=subject
    )
    parsed = parse(render_email(message, FROM, "shop.example")[0])
    assert list(parsed.keys()) == expected_names(message)
    assert parsed["Subject"] == "Deal Reply-To: x@evil.example body end"


def test_unusual_addresses() -> None:
    quoted = OutgoingMessage(uuid.uuid4(), "email", '"a b"@example.com', "***", text="hi")
    assert parse(render_email(quoted, FROM, "shop.example")[0])["To"] == '"a b"@example.com'
    utf8 = OutgoingMessage(uuid.uuid4(), "email", "顾客@例子.广告", "***", text="hi")
    data, _ = render_email(utf8, FROM, "shop.example", utf8=True)
    assert "顾客@例子.广告".encode() in data
    for to in (
        "a@example.com\r\nBcc: x@y.z",
        "=?utf-8?q?x=0D=0ABcc=3A_v=40evil.example?=@a.example",
    ):
        broken = OutgoingMessage(uuid.uuid4(), "email", to, "***", text="")
        with pytest.raises(ValueError):
            render_email(broken, FROM, "shop.example")


@pytest.mark.parametrize("to", ["shopper1@example.com", '"a b"@example.com'])
def test_message_id_is_the_same_on_every_attempt(to: str) -> None:
    """A resend after a crash carries the first attempt's Message-ID."""
    notification_id = uuid.uuid4()
    message = OutgoingMessage(notification_id, "email", to, "***", text="hi", subject="Back")
    first = render_email(message, FROM, "shop.example")
    again = render_email(message, FROM, "shop.example")
    assert first[1] == again[1] == f"<{notification_id}@shop.example>"
    assert parse(first[0])["Message-ID"] == parse(again[0])["Message-ID"] == first[1]
    other = OutgoingMessage(uuid.uuid4(), "email", to, "***", text="hi", subject="Back")
    assert render_email(other, FROM, "shop.example")[1] != first[1]


def test_the_hostile_corpus_on_this_interpreter() -> None:
    mime_check.check_corpus()


def _other_interpreters() -> list[str]:
    """CPython 3.11+ (what requires-python admits) on this host besides the running one:
    on PATH as python3.N, and pyenv's builds. The stdlib's header folding differs by patch
    level (CVE-2024-6923), so each one found runs the corpus."""
    probe_code = (
        "import os, sys; print(sys.version_info >= (3, 11), os.path.realpath(sys.executable))"
    )
    seen = {os.path.realpath(sys.executable)}
    found = []
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", "/usr/bin"]
    candidates = [
        shutil.which(f"python3.{minor}", path=directory)
        for directory in directories
        for minor in range(11, 20)
    ]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"))]
    for path in filter(None, candidates):
        probe = subprocess.run(
            [path, "-I", "-c", probe_code], capture_output=True, text=True, check=False
        )
        admitted, _, real = probe.stdout.strip().partition(" ")
        if admitted == "True" and real not in seen:
            seen.add(real)
            found.append(real)
    return found


def test_the_hostile_corpus_on_every_admitted_interpreter_found() -> None:
    # This interpreter in a fresh, isolated process always; every other one found besides.
    interpreters = [os.path.realpath(sys.executable), *_other_interpreters()]
    src = Path(__file__).resolve().parents[2] / "src"
    script = Path(mime_check.__file__).resolve()
    for interpreter in interpreters:
        result = subprocess.run(
            [interpreter, "-I", str(script), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (interpreter, result.stdout, result.stderr)
        assert result.stdout.startswith("ok"), result.stdout


# The last check, alone: what the rules before it should never let through.
_NAMES = [b"From", b"To", b"MIME-Version"]
_GOOD = b"From: a@example.com\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n\r\nhello\r\n"


def test_the_last_check_passes_a_well_formed_message() -> None:
    check_wire_form(_GOOD, _NAMES)


@pytest.mark.parametrize(
    "data",
    [
        _GOOD.replace(b"hello", b"hel\nlo"),  # a bare LF in the body
        _GOOD.replace(b"hello", b"hel\rlo"),  # a bare CR
        _GOOD.replace(b"hello\r\n", b"hello\n\r"),  # both, in the wrong order
        _GOOD.replace(b"hello", b"hel\x00lo"),  # a NUL
        _GOOD.replace(b"To: b@", b"To: b\nBcc: c@"),  # a header smuggled by a bare LF
        _GOOD.replace(b"hello", "héllo".encode()),  # 8-bit outside SMTPUTF8
        _GOOD.replace(b"MIME-Version", b"Bcc: x\r\nMIME-Version"),  # a header not written
    ],
)
def test_the_last_check_stops_what_could_add_a_line_or_a_header(data: bytes) -> None:
    with pytest.raises(ValueError):
        check_wire_form(data, _NAMES)
