"""Contacts per channel: validation, normalisation and masking.

Normalised forms feed both the ciphertext and the blind index, so the same shopper typed two
ways ("+86 138 0013 8000", "+8613800138000") is one contact.
"""

from __future__ import annotations

import enum
import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email


class Channel(enum.StrEnum):
    SMS = "sms"
    EMAIL = "email"
    WECHAT = "wechat"


class InvalidContact(ValueError):
    """Raised with a message that never repeats the value."""


_OPENID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
_MAX_CONTACT_CHARS = 320
# A mask is shown, and stored with dev-outbox messages (String(80)); an email address can be
# 254 characters, so a long domain keeps only its end ("a***@…example.com").
MAX_MASK_CHARS = 80


def normalize(channel: Channel, raw: str, default_region: str = "CN") -> str:
    if len(raw) > _MAX_CONTACT_CHARS:
        raise InvalidContact("is too long")
    if channel is Channel.SMS:
        return _normalize_phone(raw, default_region)
    if channel is Channel.EMAIL:
        return _normalize_email(raw)
    if not _OPENID.match(raw):
        raise InvalidContact("must be a WeChat openid: 20 to 64 of A-Z a-z 0-9 _ -")
    return raw


def _normalize_phone(raw: str, default_region: str) -> str:
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidContact("is not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact("is not a valid phone number")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _normalize_email(raw: str) -> str:
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidContact("is not a valid email address") from exc
    if "=?" in result.normalized:
        # Valid RFC 5322, but mail software decodes "=?...?=" as an RFC 2047 encoded word,
        # also in an address: it could turn into a line break in the To header.
        raise InvalidContact("must not contain an RFC 2047 encoded word ('=?')")
    return str(result.normalized)


def index_form(channel: Channel, normalized: str) -> str:
    """What the blind index hashes: channel-free for phones and emails so that an order's
    phone or email finds a subscription of that channel; mailbox names compared caselessly."""
    if channel is Channel.EMAIL:
        return "email:" + normalized.casefold()
    if channel is Channel.SMS:
        return "phone:" + normalized
    return "wechat:" + normalized


def mask(channel: Channel, normalized: str) -> str:
    if channel is Channel.SMS:
        country_code, national = _split_e164(normalized)
        hidden = max(len(national) - 7, 1)
        shown = national[:3] + "*" * hidden + national[3 + hidden :]
        return f"+{country_code} {shown}"
    if channel is Channel.EMAIL:
        local, _, domain = normalized.rpartition("@")
        head = f"{local[:1]}***@"
        if len(head) + len(domain) > MAX_MASK_CHARS:
            domain = "…" + domain[-(MAX_MASK_CHARS - len(head) - 1) :]
        return head + domain
    return f"{normalized[:4]}****{normalized[-4:]}"


def _split_e164(normalized: str) -> tuple[int, str]:
    """A normalised (E.164) number's country code and national significant number, read
    off its digits as phonenumbers does (country codes are prefix-free, one to three
    digits), without parsing it again: masking every subscribe's answer by a parse cost
    as much as the normalisation itself."""
    digits = normalized[1:]
    for length in (1, 2, 3):
        if int(digits[:length]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return int(digits[:length]), digits[length:]
    number = phonenumbers.parse(normalized)  # not E.164 after all: as before
    return number.country_code or 0, phonenumbers.national_significant_number(number)
