"""A contact's identity as stored: how it is sealed, how it is found, and what signed tokens
are bound to.

- **Sealing.** Each sealed value is bound to its row by associated data whose prefix names
  its kind (``contact:``, ``profile:``, ``outbox:``, ``outbox-content:``): a ciphertext
  copied to another row, or read as another kind, does not open. The prefixes live here
  together so that no two kinds can share one.
- **Look-up.** A contact is normalised for its channel (:mod:`backinstock.contacts`), then
  matched by its blind index under every key of the ring, so rows written before a key
  rotation are found too; a row stores it under the newest key (:func:`index`). Everything
  that finds shoppers by a contact (subscribing, erasure, opt-outs, orders) goes through
  :func:`normalize` and :func:`candidates`, or :func:`lookup`, which does both.
- **Token purposes.** A signed token's MAC covers its purpose, so a token made for one
  purpose never verifies for another; the purposes are listed here so none is reused.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from backinstock import contacts
from backinstock.config import Settings
from backinstock.contacts import Channel, InvalidContact
from backinstock.crypto import Keys, Sealed

# Token purposes (not secrets).
CLICK_TOKEN = "click"  # noqa: S105 - the tracked link of a message (/r/…)
UNSUBSCRIBE_TOKEN = "unsubscribe"  # noqa: S105 - a message's unsubscribe link (/u/…)
DASHBOARD_SESSION_TOKEN = "dashboard-session"  # noqa: S105 - the dashboard's session cookie
CONFIRM_TOKEN = "confirm"  # noqa: S105 - a confirmation message's link (/c/…): double opt-in
CONFIRM_CODE = "confirm-code"  # the code an SMS confirmation asks the shopper to reply
CONFIRM_CODE_DIGITS = 6


def confirmation_code(keys: Keys, subscription_id: uuid.UUID) -> str:
    """The code a pending SMS subscription is confirmed with by replying it."""
    return keys.tokens.codes(CONFIRM_CODE, subscription_id, CONFIRM_CODE_DIGITS)[0]


def confirms(keys: Keys, subscription_id: uuid.UUID, code: str) -> bool:
    """Whether ``code`` is the subscription's code (under any key of the ring)."""
    if not code.isascii():  # compare_digest takes ASCII text only
        return False
    codes = keys.tokens.codes(CONFIRM_CODE, subscription_id, CONFIRM_CODE_DIGITS)
    return any(hmac.compare_digest(code, expected) for expected in codes)


def contact_aad(row_id: uuid.UUID) -> bytes:
    """Binds a contact ciphertext to its row: copied elsewhere, it does not open."""
    return b"contact:" + row_id.bytes


def profile_aad(row_id: uuid.UUID) -> bytes:
    return b"profile:" + row_id.bytes


def outbox_aad(row_id: bytes) -> bytes:
    """A dev-outbox message's recipient."""
    return b"outbox:" + row_id


def content_aad(row_id: bytes) -> bytes:
    """A dev-outbox message's subject and body (they carry the shopper's name and tokens)."""
    return b"outbox-content:" + row_id


def open_contact(
    keys: Keys, row_id: uuid.UUID, key_id: str | None, blob: bytes | None
) -> str | None:
    if key_id is None or blob is None:
        return None
    return keys.cipher.open(Sealed(key_id, blob), contact_aad(row_id))


@dataclass(frozen=True)
class NormalizedContact:
    channel: Channel
    value: str

    @property
    def index_form(self) -> str:
        return contacts.index_form(self.channel, self.value)


def normalize(settings: Settings, channel: Channel, raw: str) -> NormalizedContact:
    """Raises :class:`~backinstock.contacts.InvalidContact` (whose message never repeats
    the value)."""
    return NormalizedContact(
        channel, contacts.normalize(channel, raw, settings.core.default_phone_region)
    )


def candidates(keys: Keys, contact: NormalizedContact) -> list[bytes]:
    """The contact's blind index under every key of the ring, the newest first: what a
    look-up matches (a row is written under the newest)."""
    return keys.blind_index.candidates(contact.index_form)


def index(keys: Keys, contact: NormalizedContact) -> bytes:
    """The contact's blind index under the newest key: what a row stores."""
    return keys.blind_index.digest(contact.index_form)


def lookup(settings: Settings, keys: Keys, given: Iterable[tuple[Channel, str]]) -> list[bytes]:
    """Blind-index candidates for each ``(channel, raw contact)`` that is a valid contact of
    its channel; one that is not matches nobody and is skipped."""
    digests: list[bytes] = []
    for channel, raw in given:
        try:
            contact = normalize(settings, channel, raw)
        except InvalidContact:
            continue
        digests += candidates(keys, contact)
    return digests
