"""Request bodies parsed as strict JSON: RFC 8259 text in UTF-8, nested at most
:data:`MAX_DEPTH` deep, every number a 64-bit integer or a finite double.

Python's ``json`` takes ``NaN`` and ``Infinity``, integers of up to 4,300 digits, and nesting
until the interpreter's recursion limit; past those it raises RecursionError or ValueError,
which FastAPI answered as ``bad_request``. Here each of them is a JSON decode error, so the
answer is the documented ``malformed_json`` (400), like any syntax error.

Routers with JSON bodies are built with ``APIRouter(route_class=StrictJsonRoute)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field

from backinstock.errors import ERROR_DESCRIPTIONS, ErrorResponse, UnsupportedMediaType

MAX_DEPTH = 32  # our deepest body (an order's items) is 3
MAX_INTEGER_DIGITS = 20  # beyond 64 bits; no field takes more than 1e12
RULES = (
    "Bodies are JSON (RFC 8259) in UTF-8, nested at most 32 deep; numbers are integers of at "
    "most 20 digits or finite decimals (no NaN or Infinity). Anything else: 400 malformed_json."
)


class _Refused(ValueError):
    pass


def parse(body: bytes) -> Any:
    """The JSON value of ``body``; json.JSONDecodeError for anything outside the rules."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("not UTF-8", "", exc.start) from None
    try:
        value = json.loads(
            text, parse_int=_integer, parse_float=_finite, parse_constant=_no_constant
        )
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH}", text, 0) from None
    except _Refused as exc:
        raise json.JSONDecodeError(str(exc), text, 0) from None
    if _deeper_than(value, MAX_DEPTH):
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH}", text, 0)
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Refused(f"an integer of more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number too large for a double")
    return value


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _deeper_than(value: Any, limit: int) -> bool:
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


def is_json(content_type: str) -> bool:
    """``application/json`` or an ``application/…+json`` type, any parameters and case."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class StrictJsonRoute(APIRoute):
    """A route whose request body is read by :func:`parse`, and refused with 415 unless it
    is declared ``Content-Type: application/json``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.body_field is not None:
            self.responses.setdefault(
                415, {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[415]}
            )
            self.response_fields[415] = create_model_field(
                name=f"Response_415_{self.unique_id}", type_=ErrorResponse, mode="serialization"
            )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict(request: Request) -> Response:
            if takes_body and not is_json(request.headers.get("content-type", "")):
                raise UnsupportedMediaType(
                    "The request body must be sent with Content-Type: application/json.",
                    details=[{"field": "Content-Type", "message": "must be application/json"}],
                )
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
