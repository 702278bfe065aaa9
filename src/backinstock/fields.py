"""Input types every schema uses for what clients send.

One rule per kind, checked at the boundary, so that no value that a store or a provider
would refuse gets past validation (a 422 naming the field, never a 500 later):

- :data:`Text`: one line of Unicode that UTF-8, PostgreSQL and an email header can all hold:
  no lone surrogates, no NUL or other control characters (C0, DEL, C1), no line or
  paragraph separators. Lengths are set per field (``Field(max_length=...)``), from the
  column that stores it.
- :data:`Instant`: an RFC 3339 date-time string with an offset (``Z`` or ``±hh:mm``), from
  1970-01-01T00:00:00Z to before 3000-01-01T00:00:00Z; never a number, never without an
  offset. A leap second (``23:59:60``) counts as the last microsecond of its minute.
  Returned in UTC. Instants that must not lie in the future are checked against the clock
  by :func:`refuse_future` (the allowed skew is a setting).
- :data:`StrictInt`: a JSON integer, not ``true``, ``"5"`` or ``5.0``; :data:`DIGITS`: a
  query integer is its digits (not ``0.5``, ``5e0`` or `` 5``).
- :data:`DecimalString`: an amount as a decimal string (``"99.00"``), not a JSON number.
- :data:`IpAddress`: an IPv4 or IPv6 address as a string (not ``false`` or ``0``).

Error messages describe the rule and never repeat the value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    IPvAnyAddress,
    Strict,
    WithJsonSchema,
)

from backinstock.errors import InvalidField

# Lone surrogates (UTF-8 cannot encode them), C0 controls with NUL, CR and LF, DEL, C1
# controls, and U+2028/U+2029 (line breaks to some readers).
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def one_line_text(value: str) -> str:
    if _NOT_TEXT.search(value) is None:
        return value
    if _SURROGATE.search(value):
        raise ValueError("must be valid Unicode (it holds a lone surrogate)")
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    raise ValueError("must be one line without control characters")


Text = Annotated[str, AfterValidator(one_line_text)]


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)  # far enough; periods add days without overflow
INSTANT_RULE = (
    "An RFC 3339 date-time with an offset (`Z` or `±hh:mm`, e.g. `2026-11-21T10:00:00Z`), "
    "from 1970-01-01T00:00:00Z to before 3000-01-01T00:00:00Z; a number or a time without "
    "an offset is refused (422). `23:59:60` (a leap second) counts as `23:59:59.999999`."
)
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:(?P<second>[0-9]{2})"
    r"(?P<fraction>\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339_string(value: Any) -> Any:
    if isinstance(value, datetime):  # from Python code, not from a client
        return value
    if not isinstance(value, str) or not (match := _RFC3339.fullmatch(value)):
        raise ValueError(
            "must be an RFC 3339 date-time string with an offset, e.g. 2026-11-21T10:00:00Z"
        )
    if match["second"] == "60":  # a leap second: the last microsecond of its minute
        end = match.end("fraction") if match["fraction"] else match.end("second")
        value = value[: match.start("second")] + "59.999999" + value[end:]
    return value


def _in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry an offset, e.g. Z")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0
        raise ValueError("must be 1970-01-01T00:00:00Z or later") from None
    if moment < EARLIEST:
        raise ValueError("must be 1970-01-01T00:00:00Z or later")
    if moment >= LATEST:
        raise ValueError("must be before 3000-01-01T00:00:00Z")
    return moment


Instant = Annotated[datetime, BeforeValidator(_rfc3339_string), AfterValidator(_in_range)]


def refuse_future(
    field: str, value: datetime | None, skew_seconds: float, now: datetime | None = None
) -> None:
    """422 unless ``value`` is at most ``skew_seconds`` after now (the system's, unless
    given): an event from the future would pin a stock level, or open an attribution
    window, until that time arrives."""
    if value is None:
        return
    if value > (now or datetime.now(UTC)) + timedelta(seconds=skew_seconds):
        raise InvalidField(field, f"must not be more than {skew_seconds:g} s in the future")


StrictInt = Annotated[int, Strict()]


def _digits(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{1,10}", value):
        raise ValueError("must be a whole number written in digits")
    return value


# For a query integer: ``Annotated[int, Query(ge=..., le=...), DIGITS]`` (after the Query,
# so that its bounds stay minimum/maximum in the OpenAPI schema).
DIGITS = BeforeValidator(_digits)

_DECIMAL = r"^[0-9]{1,16}(\.[0-9]{1,16})?$"


def _decimal_string(value: Any) -> Any:
    if isinstance(value, Decimal):  # from Python code, not from a client
        return value
    if not isinstance(value, str) or not re.fullmatch(_DECIMAL, value):
        raise ValueError("must be a decimal string such as '99.00'")
    return value


DecimalString = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    WithJsonSchema({"type": "string", "pattern": _DECIMAL, "examples": ["99.00"]}),
]


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


IpAddress = Annotated[
    IPvAnyAddress,
    BeforeValidator(_string),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 45,
            "description": "An IPv4 or IPv6 address, as a string.",
            "examples": ["203.0.113.9"],
        }
    ),
]


class RequestBody(BaseModel):
    """Base of every request body and of each object nested in one: a field the body does not
    have ("colour", "qty") is refused (422 ``invalid_field`` naming it), never dropped
    silently; its value is not echoed."""

    model_config = ConfigDict(extra="forbid")
