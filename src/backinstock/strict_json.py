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


class StrictJsonRoute(APIRoute):
    """A route whose request body is read by :func:`parse`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
