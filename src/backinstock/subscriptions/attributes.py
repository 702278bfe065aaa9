"""A subscription's attributes: a small map of non-identifying values (``segment``, ``tier``)
that templates may print, and whose ``segment`` picks a template variant and groups figures.

Checked at the boundary as strictly as every other client text (one line, no NUL, no lone
surrogates), and more: keys are slugs, values are short and NFC, and a value that reads as
an email address or a phone number is refused, because attributes are stored and shown in
the clear (the contact is the only identifying value, and it is sealed).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from phonenumbers import Leniency, PhoneNumberMatcher
from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

from backinstock.fields import one_line_text

MAX_ATTRIBUTES = 8
MAX_VALUE_LENGTH = 64
SEGMENT = "segment"
KEY_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
# A segment names template files (channels/<channel>/<locale>.<segment>.txt.j2) and is a
# query value of every figure, so it is a slug, never free text.
SEGMENT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_KEY = re.compile(KEY_PATTERN)
_SEGMENT = re.compile(SEGMENT_PATTERN)
# National numbers are read as Chinese and North American ones; "+…" numbers as themselves.
_PHONE_REGIONS = ("CN", "US")


def _keys(value: Any) -> Any:
    """The map's shape and keys; each value is then checked on its own (and its error
    names ``attributes.<key>``, safe to echo once the key is known to be a slug)."""
    if not isinstance(value, dict):
        raise ValueError("must be an object of strings")
    if len(value) > MAX_ATTRIBUTES:
        raise ValueError(f"must have at most {MAX_ATTRIBUTES} keys")
    for key in value:
        if not _KEY.fullmatch(key):
            raise ValueError(
                "keys must be 1 to 32 of a-z, 0-9 and _, starting with a letter, e.g. 'tier'"
            )
    segment = value.get(SEGMENT)
    if isinstance(segment, str) and not _SEGMENT.fullmatch(segment):
        raise ValueError("segment must be 1 to 64 of a-z, 0-9, - and _, e.g. 'sensitive-skin'")
    return value


def _looks_like_email(value: str) -> bool:
    if "@" not in value:
        return False
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def _looks_like_phone(value: str) -> bool:
    if sum(c.isdigit() for c in value) < 7:  # no phone number is shorter
        return False
    return any(
        next(iter(PhoneNumberMatcher(value, region, leniency=Leniency.VALID)), None)
        for region in _PHONE_REGIONS
    )


def _attribute_value(value: str) -> str:
    value = unicodedata.normalize("NFC", one_line_text(value))
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"must be at most {MAX_VALUE_LENGTH} characters")
    if _looks_like_email(value) or _looks_like_phone(value):
        raise ValueError("must not identify a person (it reads as an email or a phone number)")
    return value


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


AttributeValue = Annotated[str, BeforeValidator(_string), AfterValidator(_attribute_value)]

ATTRIBUTES_DOC = (
    f"Up to {MAX_ATTRIBUTES} non-identifying values describing the shopper, for message "
    'copy and figures, e.g. {"segment": "sensitive-skin", "tier": "gold"}. Keys: 1 to '
    "32 of a-z, 0-9 and _, starting with a letter. Values: strings of 1 to "
    f"{MAX_VALUE_LENGTH} characters on one line (NFC-normalised; no control characters); a "
    "value that reads as an email address or a phone number is refused (422). `segment` "
    "(1 to 64 of a-z, 0-9, - and _) picks a template variant and is the grouping and filter "
    "of every figure. Stored in the clear; kept after retention erases the contact. A repeat "
    "of a subscription still waiting does not change them."
)

Attributes = Annotated[
    dict[str, AttributeValue],
    BeforeValidator(_keys),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_ATTRIBUTES,
            "propertyNames": {"pattern": KEY_PATTERN},
            "additionalProperties": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_VALUE_LENGTH,
            },
            "properties": {"segment": {"type": "string", "pattern": SEGMENT_PATTERN}},
            "description": ATTRIBUTES_DOC,
            "examples": [{"segment": "sensitive-skin", "tier": "gold"}],
        }
    ),
]


def is_segment(value: str) -> bool:
    return _SEGMENT.fullmatch(value) is not None


def segment_of(attributes: dict[str, str] | None) -> str | None:
    return (attributes or {}).get(SEGMENT)
