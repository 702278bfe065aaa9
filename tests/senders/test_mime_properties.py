"""Fuzzing render_email against the stdlib's parser (hypothesis).

- Headers: whatever the subject holds (CR, LF, NUL, RFC 2047 encoded words in q and b,
  upper and lower case, nested, adjacent, lengths around the folding limit, mixed scripts),
  the wire bytes parse back to exactly the headers written, and the Subject to
  ``header_text`` of the input: line breaks gone, encoded words literal.
- The hand-written parts of render_email: bodies are, once parsed, the parts the stdlib's
  ``EmailMessage.set_content`` / ``add_alternative`` make of the same text; To and
  Message-ID lines written directly are byte for byte what the stdlib writes.
"""

from __future__ import annotations

import base64
import string
import unicodedata
import uuid
from email import policy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backinstock.senders import mime
from backinstock.senders.base import OutgoingMessage
from backinstock.senders.mime import header_text, render_email
from tests.senders.test_mime import FROM, content, expected_names, parse, stdlib_email

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCRIPTS = [
    "红色T恤 M",
    "「到货了」",
    "Ελληνικά",
    "русский",
    "العربية",
    "עברית",
    "😀👍",
    "ﬁ",
    "e\u0301",
]
FRAGMENTS = [
    "\r\n", "\n", "\r", "\x00", "\t", "\x0b", "\x85", "\u2028", "\u2029", "\ud800", "\udfff",
    "Reply-To: attacker@evil.example", "Bcc: x@evil.example", "\r\n\r\nPHISHING", "=?", "?=",
    "=?utf-8?", "?q?", "?b?", ":", ";", '"', "(", ")", "<", ">", "@", ",", "\\", " ", "  ",
]  # fmt: skip
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
pieces = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.sampled_from(SCRIPTS),
    any_text,
    st.integers(min_value=60, max_value=90).map(lambda n: "x" * n),  # around the fold
    st.integers(min_value=20, max_value=45).map(lambda n: "红" * n),
)


@st.composite
def encoded_words(draw: st.DrawFn, inner: st.SearchStrategy[str]) -> str:
    text = draw(inner)
    charset = draw(st.sampled_from(["utf-8", "UTF-8", "Utf-8", "iso-8859-1", "us-ascii", "x"]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        encoded = base64.b64encode(data).decode("ascii")
        letter = draw(st.sampled_from("bB"))
    else:
        encoded = "".join(
            "_" if b == 0x20 else chr(b) if 0x21 <= b <= 0x7E and b not in b"=?_" else f"={b:02X}"
            for b in data
        )
        letter = draw(st.sampled_from("qQ"))
    return f"=?{charset}?{letter}?{encoded}?="


words = encoded_words(st.lists(pieces, max_size=6).map("".join))
nested = encoded_words(words)
subjects = st.lists(st.one_of(pieces, words, nested), min_size=0, max_size=8).flatmap(
    lambda parts: st.sampled_from(["", " ", "\r\n"]).map(lambda sep: sep.join(parts))
)
ADDRESSES = [
    ("shopper1@example.com", False),
    ('"a b"@example.com', False),
    ("顾客@例子.广告", True),
]


@FUZZ
@given(
    subject=subjects,
    address=st.sampled_from(ADDRESSES),
    html=st.booleans(),
    unsubscribe=st.booleans(),
)
def test_no_subject_adds_a_header_or_a_body_line(
    subject: str, address: tuple[str, bool], html: bool, unsubscribe: bool
) -> None:
    to, utf8 = address
    message = OutgoingMessage(
        uuid.uuid4(),
        "email",
        to,
        "***",
        text="the body",
        subject=subject,
        html="<p>the body</p>" if html else None,
        unsubscribe_url="https://shop.example/u/token" if unsubscribe else None,
    )
    data, message_id = render_email(message, FROM, "shop.example", utf8=utf8)
    parsed = parse(data)
    assert list(parsed.keys()) == expected_names(message)
    assert parsed["Subject"] == header_text(subject)
    assert parsed["Message-ID"] == message_id and parsed["To"] == to
    assert content(parsed, "plain") == "the body\n"
    assert not any(part.defects for part in parsed.walk())
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert utf8 or data.isascii()
    assert all(len(line) <= 78 for line in data.split(b"\r\n"))


@FUZZ
@given(st.lists(st.one_of(pieces, words), max_size=8).map("".join))
def test_header_text_is_one_clean_line(value: str) -> None:
    text = header_text(value)
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)
    assert "  " not in text and "\t" not in text and text == text.strip(" ")
    assert header_text(text) == text
    # Nothing else changes: encoded words stay exactly as they were typed.
    removed = ("Cc", "Cs", "Zl", "Zp")
    kept = "".join(c for c in value if c != " " and unicodedata.category(c) not in removed)
    assert text.replace(" ", "") == kept


def test_clean_text_is_unchanged() -> None:
    clean = "=?utf-8?q?Deal=0D=0A?= 红色T恤\u3000M \xa0é"
    assert header_text(clean) == clean


bodies = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300) | st.lists(
    st.one_of(
        st.sampled_from(["\r\n", "\n", "\r", "\x00", " ", "=", "."]),
        any_text.filter(lambda t: not any(unicodedata.category(c) == "Cs" for c in t)),
        st.integers(70, 90).map(lambda n: "y" * n),
    ),
    max_size=20,
).map("".join)


@FUZZ
@given(text=bodies, html=st.none() | bodies)
def test_bodies_are_the_stdlib_s(text: str, html: str | None) -> None:
    """The hand-written part: parsed, our parts equal the stdlib's for the same text."""
    message = OutgoingMessage(
        uuid.uuid4(), "email", "shopper1@example.com", "***", text=text, subject="s", html=html
    )
    ours = parse(render_email(message, FROM, "shop.example")[0])
    reference = parse(stdlib_email(message, "s").as_bytes())
    assert ours.get_content_type() == reference.get_content_type()
    for subtype in ("plain", "html"):
        assert content(ours, subtype) == content(reference, subtype)
    assert not any(part.defects for part in ours.walk())


ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=24)
labels = st.text(alphabet=string.ascii_letters + string.digits + "-", min_size=1, max_size=20)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
addresses = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.lists(atoms, min_size=1, max_size=4).map(".".join),
    domains,
)
message_ids = st.builds(
    lambda u, domain: f"<{u}@{domain}>", st.uuids().map(str), domains
) | st.builds(
    lambda u, domain: f"<{u}@{domain}>", st.text(alphabet="0123456789abcdef-", min_size=1), domains
)


def _written(write: object, *args: object) -> bytes | str:
    try:
        return write(*args)  # type: ignore[operator,no-any-return]
    except ValueError:
        return "refused"


@FUZZ
@given(
    name_value=st.one_of(
        st.tuples(st.just("To"), addresses), st.tuples(st.just("Message-ID"), message_ids)
    ),
    utf8=st.booleans(),
)
def test_headers_written_directly_are_the_stdlib_s(name_value: tuple[str, str], utf8: bool) -> None:
    name, value = name_value
    wire = policy.SMTPUTF8 if utf8 else policy.SMTP
    simple = mime._SIMPLE_ADDRESS if name == "To" else mime._SIMPLE_MESSAGE_ID
    ours = _written(mime._plain_header, wire, name, value, simple)
    assert ours == _written(mime._header, wire, name, value)
