"""A hostile corpus for render_email, checked with the stdlib's own parser.

Runs inside the test suite (on the suite's interpreter) and as a script on other
interpreters, which need nothing but the standard library and ``src``:

    python tests/senders/mime_check.py src

Prints ``ok <version>`` when every message parses back to exactly the headers written,
with the Subject equal to ``header_text`` of the input (encoded words in it kept literal).
"""

from __future__ import annotations

import base64
import sys
import uuid


def _q(text: str, charset: str = "utf-8", q: str = "q") -> str:
    data = text.encode(charset)
    if q.lower() == "b":
        return f"=?{charset}?{q}?{base64.b64encode(data).decode()}?="
    return f"=?{charset}?{q}?{''.join(f'={b:02X}' for b in data)}?="


INJECTION = "Deal\r\nReply-To: attacker@evil.example\r\n\r\nPHISHING"
SUBJECTS = [
    "=?utf-8?q?Deal=0D=0AReply-To:_attacker@evil.example=0D=0A=0D=0APHISHING?= x",
    "=?UTF-8?Q?Deal=0D=0ABcc:_x@evil.example?=",
    _q(INJECTION),
    _q(INJECTION, q="B"),
    _q(INJECTION, q="b"),
    _q(INJECTION, charset="iso-8859-1", q="Q"),
    _q(INJECTION) + _q(INJECTION, q="b"),  # adjacent, no space
    _q(INJECTION) + " " + _q(INJECTION),  # adjacent across a space
    _q(_q(INJECTION)),  # nested: decodes to another encoded word
    "=?utf-8?q?" + _q(INJECTION) + "?=",
    "prefix" + _q("\n") + "suffix",  # inside a word
    "=?utf-8*en?q?Deal=0AX-Injected:_1?=",  # RFC 2231 language tag
    "=?unknown-8bit?q?=0D=0AX:1?=",
    "=?utf-8?q?=00=0D=0A?=",
    "=?utf-8?q?unterminated=0D=0AX:1",
    "?= =? =?? =?utf-8?? =?utf-8?x?abc?=",
    "红色T恤 " + _q(INJECTION, q="b") + " Ελληνικά русский العربية",
    "Back in stock\r\nX-Injected: 1",
    "Back in stock\nX-Injected: 1\n\nbody",
    "bare\rCR and NUL\x00 and VT\x0b FF\x0c NEL\x85 LS\u2028 PS\u2029",
    "\t leading and trailing \t",
    "x" * 300,
    "é" * 150,
    ("word " * 40).strip(),
    ("「红色T恤 M」到货了 " * 8) + _q("Ünïcödé\r\n"),
    "a" * 77 + "=?" + "b" * 77,
    "=?utf-8?q?" + "A" * 200 + "?=",
    "lone \ud800 surrogate \udfff",
    "",
    "   ",
]
ADDRESSES = [
    ("shopper1@example.com", False),
    ('"a b"@example.com', False),
    ("顾客@例子.广告", True),
]


def _expected_names(has_subject: bool, has_html: bool) -> list[str]:
    names = ["From", "To", "Subject", "Date", "Message-ID"]
    if not has_subject:
        names.remove("Subject")
    names += ["List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version", "Content-Type"]
    return names if has_html else [*names, "Content-Transfer-Encoding"]


def check_corpus() -> int:
    """Raise AssertionError at the first message that does not parse back as written;
    return how many were checked."""
    from email import policy
    from email.parser import BytesParser

    from backinstock.senders.base import OutgoingMessage
    from backinstock.senders.mime import header_text, render_email

    checked = 0
    for subject in SUBJECTS:
        body = subject.encode("utf-8", "replace").decode()  # a body must be valid Unicode
        for to, utf8 in ADDRESSES:
            for with_html in (False, True):
                message = OutgoingMessage(
                    uuid.uuid4(),
                    "email",
                    to,
                    "***",
                    text=f"{body}\nline two",
                    subject=subject,
                    html=f"<p>{body}</p>" if with_html else None,
                    unsubscribe_url="https://shop.example/u/token",
                )
                data, message_id = render_email(
                    message, "Shop <shop@shop.example>", "shop.example", utf8=utf8
                )
                parsed = BytesParser(policy=policy.default).parsebytes(data)
                where = f"subject={subject!r} to={to!r} html={with_html}"
                assert list(parsed.keys()) == _expected_names(True, with_html), where
                assert str(parsed["Subject"]) == header_text(subject), where
                assert str(parsed["Message-ID"]) == message_id, where
                assert not any(part.defects for part in parsed.walk()), where
                assert b"\n" not in data.replace(b"\r\n", b""), where
                assert b"\r" not in data.replace(b"\r\n", b""), where
                assert utf8 or data.isascii(), where
                assert all(len(line) <= 78 for line in data.split(b"\r\n")), where
                checked += 1
    return checked


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    count = check_corpus()
    print(f"ok {sys.version.split()[0]} {count} messages")
