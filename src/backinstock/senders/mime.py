"""The MIME bytes of a notification email.

The stdlib ``email`` package parses and refolds every header through its policy machinery
and renders bodies through a generator: about 2 ms of CPU per message, more than the whole
SMTP transaction. :func:`render_email` writes the same structure directly for the common
case (an ASCII addr-spec recipient, an ASCII unsubscribe URL): headers that repeat across a
wave (From, Subject) are folded once by the stdlib and cached, bodies are base64 (or 7bit
when they already are short ASCII lines) by ``binascii``. Anything unusual — a UTF-8
mailbox, odd characters in an address — goes through :func:`build_email`, the stdlib path.

Either way the message is 7-bit (no relay needs 8BITMIME unless the address itself is
UTF-8), has CRLF line endings and lines within RFC 5322's 78 characters except where a
single token (a long URL) cannot be broken, which stays within the hard limit of 998.
"""

from __future__ import annotations

import binascii
import re
import secrets
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache

from backinstock.senders.base import OutgoingMessage

# Parts are encoded to 7 bits (quoted-printable or base64) when built, so any relay takes
# them without BODY=8BITMIME; the wire policies add CRLF line endings, and raw UTF-8
# headers only when the envelope needs SMTPUTF8 anyway.
_BUILD_POLICY = policy.default.clone(cte_type="7bit")
_WIRE_POLICY = policy.SMTP
_WIRE_POLICY_UTF8 = policy.SMTPUTF8

_CRLF = b"\r\n"
_MAX_LINE = 78  # RFC 5322 2.1.1: SHOULD; a body line longer than this gets base64
_HARD_MAX_LINE = 998  # RFC 5322 2.1.1: MUST
_BASE64_CHUNK = 57  # bytes per 76-character base64 line, as the stdlib writes them
# An addr-spec made of dot-atoms (RFC 5322 3.4.1) in ASCII: needs no quoting or encoding.
_SIMPLE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
_URL = re.compile(r"[!-~]+")  # printable ASCII, no spaces: nothing to fold or encode


def render_email(
    message: OutgoingMessage, from_header: str, msgid_domain: str, *, utf8: bool = False
) -> tuple[bytes, str]:
    """The wire bytes (CRLF, dot-stuffing left to the client) and the Message-ID; ``utf8``
    when the envelope uses SMTPUTF8 (see :func:`needs_smtputf8`). Raises ValueError for a
    header that cannot be written (a line break in an address)."""
    if utf8 or not _is_simple(message):
        return _render_with_stdlib(message, from_header, msgid_domain, utf8)
    message_id = stable_message_id(message, msgid_domain)
    headers = [
        folded_header("From", from_header),
        b"To: " + message.to.encode("ascii") + _CRLF,
    ]
    if message.subject is not None:
        headers.append(folded_header("Subject", _one_line(message.subject)))
    headers += [
        b"Date: " + formatdate(usegmt=True).encode("ascii") + _CRLF,
        b"Message-ID: " + message_id.encode("ascii") + _CRLF,
    ]
    if message.unsubscribe_url:
        # RFC 8058 one-click unsubscribe; mailbox providers require it for bulk senders.
        # One unbroken line even past 78 characters (the stdlib would turn it into RFC 2047
        # encoded words, which RFC 2369 readers do not decode); 998 is the hard limit.
        url = message.unsubscribe_url.encode("ascii")
        headers += [
            b"List-Unsubscribe: <" + url + b">" + _CRLF,
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + _CRLF,
        ]
    headers.append(b"MIME-Version: 1.0" + _CRLF)
    plain = _text_part("plain", message.text)
    if message.html is None:
        return b"".join(headers) + plain, message_id
    html = _text_part("html", message.html)
    boundary = _boundary(plain, html)
    headers.append(
        b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"' + _CRLF + _CRLF
    )
    delimiter = b"--" + boundary + _CRLF
    body = delimiter + plain + _CRLF + delimiter + html + _CRLF + b"--" + boundary + b"--" + _CRLF
    return b"".join(headers) + body, message_id


def build_email(message: OutgoingMessage, from_header: str, msgid_domain: str) -> EmailMessage:
    """The MIME message through the stdlib: text, plus an HTML alternative when there is one.
    Raises ValueError for a header that cannot be written (a line break in it)."""
    email = EmailMessage(policy=_BUILD_POLICY)
    email["From"] = from_header
    email["To"] = message.to
    if message.subject is not None:
        email["Subject"] = _one_line(message.subject)
    email["Date"] = formatdate(usegmt=True)
    email["Message-ID"] = stable_message_id(message, msgid_domain)
    if message.unsubscribe_url:
        email["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
        email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    email.set_content(message.text)
    if message.html is not None:
        email.add_alternative(message.html, subtype="html")
    return email


def stable_message_id(message: OutgoingMessage, msgid_domain: str) -> str:
    """``<notification-id@domain>``: the same on every attempt, so a message resent after a
    crash left it in doubt is one message to mail stores that de-duplicate on Message-ID."""
    return f"<{message.notification_id}@{msgid_domain}>"


def needs_smtputf8(to: str, envelope_from: str) -> bool:
    """A non-ASCII address needs SMTPUTF8 (RFC 6531) in the envelope and the headers."""
    return not (to.isascii() and envelope_from.isascii())


@lru_cache(maxsize=1024)
def folded_header(name: str, value: str) -> bytes:
    """``Name: value`` CRLF as the stdlib folds and encodes it (RFC 2047 words for non-ASCII).
    Cached: From is one value and a wave's subjects a handful."""
    header = _WIRE_POLICY.header_store_parse(name, value)[1]
    return _WIRE_POLICY.fold_binary(name, header)


def _render_with_stdlib(
    message: OutgoingMessage, from_header: str, msgid_domain: str, utf8: bool
) -> tuple[bytes, str]:
    email = build_email(message, from_header, msgid_domain)
    data = email.as_bytes(policy=_WIRE_POLICY_UTF8 if utf8 else _WIRE_POLICY)
    return data, str(email["Message-ID"])


def _is_simple(message: OutgoingMessage) -> bool:
    url = message.unsubscribe_url
    return (
        len(message.to) < _HARD_MAX_LINE - 10
        and _SIMPLE_ADDRESS.fullmatch(message.to) is not None
        and (not url or (len(url) < _HARD_MAX_LINE - 30 and _URL.fullmatch(url) is not None))
    )


def _one_line(value: str) -> str:
    # A product name with a line break must not fail (or inject) the header.
    return " ".join(value.split())


def _text_part(subtype: str, text: str) -> bytes:
    """Content-Type and Content-Transfer-Encoding headers, a blank line, the body."""
    lines = text.encode("utf-8").splitlines() or [b""]
    if all(len(line) <= _MAX_LINE and line.isascii() for line in lines):
        cte, body = b"7bit", b"".join(line + _CRLF for line in lines)
    else:
        # Inside base64 lines end in LF, as the stdlib (and so every reader) does it.
        cte, data = b"base64", b"".join(line + b"\n" for line in lines)
        body = b"".join(
            binascii.b2a_base64(data[i : i + _BASE64_CHUNK], newline=False) + _CRLF
            for i in range(0, len(data), _BASE64_CHUNK)
        )
    return (
        b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"' + _CRLF
        + b"Content-Transfer-Encoding: " + cte + _CRLF + _CRLF + body
    )  # fmt: skip


def _boundary(*parts: bytes) -> bytes:
    # Random, and checked against the parts: a 7bit body could in theory contain it.
    while True:
        boundary = b"=_" + secrets.token_hex(16).encode("ascii")
        if not any(boundary in part for part in parts):
            return boundary
