"""Page cursors: opaque base64url text (no padding), one codec for every paged endpoint.

A cursor says where the last page ended: a row id (newest-first lists) or a small JSON
array (the demand ranking). One that did not come from the endpoint is a 422 on ``cursor``
(``invalid_field``), never a 500; callers check decoded values as strictly as the values
they stand for.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from backinstock.errors import InvalidField


def invalid() -> InvalidField:
    return InvalidField("cursor", "is not a cursor this endpoint returned")


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, binascii.Error):
        raise invalid() from None


def encode_id(row_id: uuid.UUID) -> str:
    return encode(row_id.bytes)


def decode_id(cursor: str) -> uuid.UUID:
    raw = decode(cursor)
    try:
        return uuid.UUID(bytes=raw)
    except ValueError:
        raise invalid() from None


def encode_json(value: Any) -> str:
    return encode(json.dumps(value, separators=(",", ":")).encode())


def decode_json(cursor: str) -> Any:
    raw = decode(cursor)
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid() from None
