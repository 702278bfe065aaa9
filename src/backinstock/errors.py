"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``.

Messages and details are written here or by validation, never built from the request's
values, so a contact sent in a bad request cannot come back in an error or a log line.

The errors are raised below the web floor too (services, the command line): FastAPI is
imported by the functions that answer with them, so that raising one does not load it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI, Request

log = structlog.get_logger(__name__)


class ErrorDetail(BaseModel):
    field: str | None = None
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail]


class ErrorResponse(BaseModel):
    """The one error shape of every 4xx and 5xx answer."""

    error: ErrorBody


ERROR_DESCRIPTIONS = {
    400: "Malformed request: `malformed_json` for a body that is not strict JSON (UTF-8, "
    "nested at most 32 deep, integers of at most 20 digits, finite numbers)",
    401: "No API key, or an unknown or revoked one",
    403: "The API key lacks the scope",
    404: "Not found",
    409: "Conflict",
    410: "Gone: expired or withdrawn",
    413: "Request body too large",
    415: "`unsupported_media_type`: the body was not sent with `Content-Type: application/json`",
    422: "A field is invalid",
    429: "Rate limited; see Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers
        if code:
            self.code = code


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidField(ApiError):
    status, code = 422, "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", details=[{"field": field, "message": message}])


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
}


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    if "[key]" in parts:  # a refused map key: name the map, never the key that was sent
        at = parts.index("[key]")
        parts = [*parts[: max(at - 1, 0)], "[key]", *parts[at + 1 :]]
    return ".".join(parts) or "body"


async def _on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    from fastapi.exceptions import RequestValidationError

    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    invalid = next((err for err in errors if err.get("type") == "json_invalid"), None)
    if invalid is not None:
        # The decoder's reason ("Expecting ',' delimiter", "nested deeper than 32") names
        # no value; the position and the body are left out.
        reason = str((invalid.get("ctx") or {}).get("error", "")).rstrip(".")
        message = "The request body is not valid JSON" + (f": {reason}." if reason else ".")
        return error_response(400, "malformed_json", message)
    details = validation_details(errors)
    return error_response(422, "invalid_field", invalid_summary(details), details)


def validation_details(errors: Sequence[Any], prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as ``details``: only the location (under ``prefix``, for an item of
    a bulk request) and pydantic's own message, never the submitted input."""
    return [
        {"field": _prefixed(prefix, _field_path(tuple(e["loc"]))), "message": _message(e)}
        for e in errors
    ]


def invalid_summary(details: list[dict[str, Any]]) -> str:
    return "Invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])


def _prefixed(prefix: str, path: str) -> str:
    if not prefix:
        return path
    return prefix if path == "body" else f"{prefix}.{path}"


def _message(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "is not a field of this request"  # a typo is refused, not dropped
    return str(error["msg"])


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, message, headers=headers or None)


def _allowed_methods(request: Request) -> str:
    """Every method of the path, not only those of the first route that matched it: one
    path may be served by several routes (GET and DELETE of a subscription)."""
    path = request.scope.get("path", "")
    routes: list[tuple[re.Pattern[str], set[str]]] = getattr(request.app.state, "route_methods", [])
    methods = {m for pattern, route_methods in routes if pattern.match(path) for m in route_methods}
    return ", ".join(sorted(methods))


def remember_routes(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """The paths and methods the app serves, for the ``Allow`` header of a 405."""
    from fastapi.routing import APIRoute

    app.state.route_methods = [
        (route.path_regex, set(route.methods or ()))
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
    ]


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The exception text may hold anything; log only its type.
    log.error("unhandled_error", error_type=type(exc).__name__)
    return error_response(500, "internal_error", "Something went wrong on our side.")


def install_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
