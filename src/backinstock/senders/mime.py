"""The MIME bytes of a notification email.

Header values go through the stdlib ``email`` package under the SMTP policy: its header
registry parses each value, its folder wraps it and writes RFC 2047 encoded words for
non-ASCII text. (A simple ASCII address and our own Message-ID are written directly when
they fit on one line: the stdlib writes the very same bytes, which the tests fuzz, and its
parsing was most of the cost of a message.) What the stdlib cannot be trusted with on every
interpreter that ``requires-python`` admits is handled here, the same way on all of them:

- Hostile text. The subject carries a product name that came through the API.
  :func:`header_text` makes it one line (line breaks and other control characters become
  spaces, lone surrogates are dropped). Text containing ``=?`` is a different danger: the
  stdlib's header parser, like every mail reader, decodes anything shaped like an RFC 2047
  encoded word, so ``=?utf-8?q?Deal=0D=0AReply-To:_x@evil.example?=`` turns into a line
  break, which CPython's folder before 3.11.10 / 3.12.5 (CVE-2024-6923) writes out as a real
  one: a header injection. Such a subject is written wholly as encoded words of its literal
  text (``email.header.Header``), so readers show ``=?...?=`` exactly as it was typed; it is
  never decoded.
- A last check. The finished header block is split into its header names, which must be
  exactly the ones written here, in order; a bare CR or LF anywhere, a NUL, or (outside
  SMTPUTF8) a non-ASCII byte fails the message with ValueError. Whatever might slip past the
  rules above cannot add a header or a body line: it stops the message instead.

Bodies are written here, not by the stdlib: base64 by ``binascii``, or 7bit when every line
is short printable ASCII. They are the parts ``EmailMessage.set_content`` makes (the tests
fuzz the two against each other), at a fraction of its cost (about 1 ms of CPU per message,
more than the whole SMTP exchange).

The message is 7-bit unless the envelope uses SMTPUTF8 (a UTF-8 address), has CRLF line
endings and lines within RFC 5322's 78 characters, except an unbreakable List-Unsubscribe
URL, which stays within the hard limit of 998.
"""

from __future__ import annotations

import binascii
import random
import re
import time
import unicodedata
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import formatdate
from functools import lru_cache

from backinstock.senders.base import OutgoingMessage

# The wire policies: CRLF line endings; raw UTF-8 in headers only when the envelope needs
# SMTPUTF8 anyway. Bodies are 7-bit either way (base64), so no relay needs 8BITMIME.
_WIRE = policy.SMTP
_WIRE_UTF8 = policy.SMTPUTF8
_READER = BytesParser(policy=policy.default)

_CRLF = b"\r\n"
_MAX_LINE = 78  # RFC 5322 2.1.1: SHOULD; a body line longer than this gets base64
_HARD_MAX_LINE = 998  # RFC 5322 2.1.1: MUST
_BASE64_CHUNK = 57  # bytes per 76-character base64 line, as the stdlib writes them
_BASE64_LINE = _BASE64_CHUNK * 4 // 3
_URL = re.compile(r"[!-~]+")  # printable ASCII, no spaces: nothing to fold or encode
_PRINTABLE_TEXT = re.compile(rb"[\t\n\r -~]*")  # what a 7bit body may hold, line breaks aside
_BLANKS = re.compile(r"[ \t]+")
# An ASCII addr-spec of dot-atoms (RFC 5322 3.4.1) and our own Message-ID: the stdlib writes
# them unchanged when they fit on one line (tests compare the bytes), at a sixth of the cost.
_SIMPLE_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
)
_SIMPLE_MESSAGE_ID = re.compile(r"<[0-9a-f-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*>")
# Unicode categories that cannot stay in a one-line header: controls (CR, LF, NUL, ...),
# line and paragraph separators, and lone surrogates (no encoding can write them).
_TO_SPACE = frozenset({"Cc", "Zl", "Zp"})
_DROPPED = "Cs"


def render_email(
    message: OutgoingMessage, from_header: str, msgid_domain: str, *, utf8: bool = False
) -> tuple[bytes, str]:
    """The wire bytes (CRLF, dot-stuffing left to the client) and the Message-ID; ``utf8``
    when the envelope uses SMTPUTF8 (see :func:`needs_smtputf8`). Raises ValueError for a
    message that cannot be written safely (e.g. a line break in an address)."""
    wire = _WIRE_UTF8 if utf8 else _WIRE
    message_id = stable_message_id(message, msgid_domain)
    headers = [
        _cached_header(wire, "From", from_header),
        _plain_header(wire, "To", message.to, _SIMPLE_ADDRESS),
    ]
    names = [b"From", b"To"]
    if message.subject is not None:
        headers.append(subject_header(message.subject))
        names.append(b"Subject")
    headers += [
        _cached_header(wire, "Date", _date_at(int(time.time()))),
        _plain_header(wire, "Message-ID", message_id, _SIMPLE_MESSAGE_ID),
    ]
    names += [b"Date", b"Message-ID"]
    if message.unsubscribe_url:
        # RFC 8058 one-click unsubscribe; mailbox providers require it for bulk senders.
        headers += [
            _unsubscribe_header(wire, message.unsubscribe_url),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" + _CRLF,
        ]
        names += [b"List-Unsubscribe", b"List-Unsubscribe-Post"]
    headers.append(b"MIME-Version: 1.0" + _CRLF)
    names += [b"MIME-Version", b"Content-Type"]
    plain = _text_part("plain", message.text)
    if message.html is None:
        data = b"".join(headers) + plain
        names.append(b"Content-Transfer-Encoding")
    else:
        html = _text_part("html", message.html)
        boundary = _boundary(plain, html)
        headers.append(
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"' + _CRLF * 2
        )
        delimiter = b"--" + boundary + _CRLF
        closing = b"--" + boundary + b"--" + _CRLF
        data = b"".join(headers) + delimiter + plain + _CRLF + delimiter + html + _CRLF + closing
    check_wire_form(data, names, utf8=utf8)
    return data, message_id


def header_text(value: str) -> str:
    """What a one-line header shows of ``value``: line breaks and other control characters
    become spaces, lone surrogates are dropped, runs of spaces and tabs become one space,
    and the ends are trimmed. Everything else, ``=?...?=`` included, is kept as it is."""
    if value.isascii() and value.isprintable() and "  " not in value and value == value.strip():
        return value  # the common case, without a pass per character
    kept = "".join(
        " " if category in _TO_SPACE else char
        for char in value
        if (category := unicodedata.category(char)) != _DROPPED
    )
    return _BLANKS.sub(" ", kept).strip(" ")


@lru_cache(maxsize=1024)
def subject_header(subject: str) -> bytes:
    """``Subject: ...`` CRLF that every reader shows as :func:`header_text` of ``subject``.
    ASCII even under SMTPUTF8 (encoded words are valid there too, and keep lines within 78
    octets). Cached: a wave's messages share a handful of subjects, so the read-back is
    cheap."""
    text = header_text(subject)
    if "=?" not in text:
        folded = _header(_WIRE, "Subject", text)
        if _read_back(folded) == text:
            return folded
    # Encoded words of the literal text: readers decode them back to the text, "=?...?="
    # included, and no further. Also the way out of the stdlib's folding quirks (a word
    # too long for the first line comes back with a leading space).
    encoded = Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return b"Subject: " + encoded.encode("ascii") + _CRLF


def _read_back(folded: bytes) -> str:
    return str(_READER.parsebytes(folded + _CRLF)["Subject"])


def check_wire_form(data: bytes, names: list[bytes], *, utf8: bool = False) -> None:
    """Raise ValueError unless the message's header block holds exactly ``names`` in that
    order and the message has no bare CR or LF, no NUL, and (unless ``utf8``) only ASCII."""
    head = data.partition(b"\r\n\r\n")[0]
    found = [line.partition(b":")[0] for line in head.split(_CRLF) if line[:1] not in b" \t"]
    if found != names or head[:1] in (b" ", b"\t"):
        raise ValueError("the header block is not the one written")
    # Every CR and every LF belongs to a CRLF exactly when the three counts agree (CRLFs
    # cannot overlap); counting copies nothing, unlike removing the CRLFs first.
    crlf = data.count(_CRLF)
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf or b"\x00" in data:
        raise ValueError("a bare line break or NUL in the message")
    if not utf8 and not data.isascii():
        raise ValueError("8-bit data outside SMTPUTF8")


def stable_message_id(message: OutgoingMessage, msgid_domain: str) -> str:
    """``<notification-id@domain>``: the same on every attempt, so a message resent after a
    crash left it in doubt is one message to mail stores that de-duplicate on Message-ID."""
    return f"<{message.notification_id}@{msgid_domain}>"


def needs_smtputf8(to: str, envelope_from: str) -> bool:
    """A non-ASCII address needs SMTPUTF8 (RFC 6531) in the envelope and the headers."""
    return not (to.isascii() and envelope_from.isascii())


def _header(wire: EmailPolicy[EmailMessage], name: str, value: str) -> bytes:
    """``Name: value`` CRLF as the stdlib parses, folds and encodes it. Raises ValueError for
    a value it refuses (a line break in it, an address part with CR or LF)."""
    return wire.fold_binary(name, wire.header_store_parse(name, value)[1])


def _plain_header(
    wire: EmailPolicy[EmailMessage], name: str, value: str, simple: re.Pattern[str]
) -> bytes:
    """What :func:`_header` writes, without its parsing, for a value ``simple`` matches that
    fits on one line; "=?" goes to the stdlib (it decodes encoded words, also in addresses)."""
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE and "=?" not in value and simple.fullmatch(value):
        return line.encode("ascii") + _CRLF
    return _header(wire, name, value)


@lru_cache(maxsize=256)
def _cached_header(wire: EmailPolicy[EmailMessage], name: str, value: str) -> bytes:
    # For values shared by many messages (From; Date within a second): never contacts.
    return _header(wire, name, value)


def _unsubscribe_header(wire: EmailPolicy[EmailMessage], url: str) -> bytes:
    # One unbroken line even past 78 characters: the stdlib would turn a long URL into RFC
    # 2047 encoded words, which RFC 2369 readers do not decode. Only printable ASCII without
    # spaces is written raw (nothing in it can end the line); anything else goes through the
    # stdlib.
    if _URL.fullmatch(url) and len(url) < _HARD_MAX_LINE - 30:
        return b"List-Unsubscribe: <" + url.encode("ascii") + b">" + _CRLF
    return _header(wire, "List-Unsubscribe", f"<{url}>")


def _text_part(subtype: str, text: str) -> bytes:
    """Content-Type and Content-Transfer-Encoding headers, a blank line, the body."""
    raw = text.encode("utf-8")
    lines = raw.splitlines() or [b""]
    # One pass over the whole text, not a match per line: bytes.splitlines() breaks only at
    # CR, LF and CRLF, so a text of printable ASCII and those has printable lines.
    if _PRINTABLE_TEXT.fullmatch(raw) and max(map(len, lines)) <= _MAX_LINE:
        cte, body = b"7bit", _CRLF.join(lines) + _CRLF
    else:
        # Inside base64 lines end in LF, as the stdlib (and so every reader) does it; 76
        # characters a line (57 bytes), as it writes them.
        cte = b"base64"
        encoded = binascii.b2a_base64(b"\n".join(lines) + b"\n", newline=False)
        body = b"".join(
            encoded[i : i + _BASE64_LINE] + _CRLF for i in range(0, len(encoded), _BASE64_LINE)
        )
    return (
        b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"' + _CRLF
        + b"Content-Transfer-Encoding: " + cte + _CRLF + _CRLF + body
    )  # fmt: skip


def _boundary(*parts: bytes) -> bytes:
    # Random, and checked against the parts: a 7bit body could in theory contain it. It
    # needs no secrecy (a body holding it is caught here), so not the OS's random source.
    while True:
        boundary = b"=_%032x" % random.getrandbits(128)
        if not any(boundary in part for part in parts):
            return boundary


@lru_cache(maxsize=1)
def _date_at(second: int) -> str:
    """The Date header's value, formatted once a second (each message would otherwise)."""
    return formatdate(second, usegmt=True)
