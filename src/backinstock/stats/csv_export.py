"""Figures as CSV, for spreadsheets.

Product names come from storefronts, so any text cell could be a formula: a cell starting
with ``= + - @``, a tab or a carriage return is prefixed with ``'`` (OWASP's advice), which
spreadsheets show as text instead of evaluating it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from fastapi import Response

MEDIA_TYPE = "text/csv; charset=utf-8"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | float | Decimal | datetime | None


def cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        return "'" + value if value.startswith(_FORMULA_STARTS) else value
    return str(value)  # numbers we wrote ourselves


def render(header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows([cell(value) for value in row] for row in rows)
    return out.getvalue()


def response(
    name: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Cell]],
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        render(header, rows),
        media_type=MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"', **(headers or {})},
    )


def openapi(example: str) -> dict[int | str, dict[str, object]]:
    """The ``text/csv`` alternative of a 200, for the route's OpenAPI ``responses``."""
    return {
        200: {
            "description": "The figures; as CSV with `Accept: text/csv` or `?format=csv`.",
            "content": {
                MEDIA_TYPE.split(";")[0]: {"schema": {"type": "string"}, "example": example}
            },
        }
    }
