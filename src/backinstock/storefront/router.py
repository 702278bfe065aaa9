"""No key needed: the widget a store's pages load, and the shopper's own page.

- ``GET /widget.js`` is the newest widget, cached briefly; ``GET /widget/v{version}/widget.js``
  is one released version, which never changes, cached for a year: the one to pin with
  Subresource Integrity. Both may be loaded by any page (``Access-Control-Allow-Origin: *``,
  which a ``<script crossorigin>`` checked by SRI needs) and are sent gzipped to browsers
  that take it.
- ``GET /s/{token}`` shows what the shopper waits for; its buttons ``POST`` to stop one or
  all (GET changes nothing: mail scanners fetch links nobody clicked).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from backinstock.config import Settings
from backinstock.deps import RuntimeDep, SessionDep
from backinstock.errors import error_response
from backinstock.identity import CLICK_TOKEN, SHOPPER_PAGE_TOKEN
from backinstock.storefront import pages, shopper, widget

router = APIRouter(tags=["storefront"])

LATEST_CACHE = "public, max-age=300"
PINNED_CACHE = "public, max-age=31536000, immutable"
_SCRIPT_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "X-Content-Type-Options": "nosniff",
    "Vary": "Accept-Encoding",
}
_SCRIPT_TYPE = "text/javascript; charset=utf-8"
_SCRIPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The widget's JavaScript (gzipped when the client accepts it)",
        "content": {"text/javascript": {"schema": {"type": "string"}}},
    },
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
}

# The pages carry no script and no inline style; forms post to the page itself only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The token is in the path: no other site is told it (and POSTs keep their Origin).
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}
_MAX_FORM_BYTES = 4096
_LANG = Query(description="zh-CN or en; by default the subscription's, else Accept-Language's")
_STOPPED = Query(description="Set by the page after a stop: a subscription id, or `all`")
# A page's refusals are pages, or the one error shape for a client accepting only JSON.
_PAGE_OR_ERROR = {
    "text/html": {"schema": {"type": "string"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}},
}
_PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {
        "description": "Unknown or forged token, or what it named no longer exists",
        "content": _PAGE_OR_ERROR,
    },
}


def _script(request: Request, release: widget.Release, cache_control: str) -> Response:
    headers = {**_SCRIPT_HEADERS, "Cache-Control": cache_control, "ETag": release.etag}
    if release.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if _takes_gzip(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return Response(release.gzipped, media_type=_SCRIPT_TYPE, headers=headers)
    return Response(release.body, media_type=_SCRIPT_TYPE, headers=headers)


def _takes_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


@router.get(
    "/widget.js",
    operation_id="getWidget",
    response_class=Response,
    responses=_SCRIPT_RESPONSES,
)
async def latest_widget(request: Request) -> Response:
    """The newest "notify me" widget (no key). Cached for 5 minutes; to pin a version and
    check it with Subresource Integrity, load `/widget/v{version}/widget.js` instead (the
    README gives the snippet, the version's `integrity` and its size)."""
    return _script(request, widget.latest(), LATEST_CACHE)


@router.get(
    "/widget/v{version}/widget.js",
    operation_id="getWidgetVersion",
    response_class=Response,
    responses={
        **_SCRIPT_RESPONSES,
        404: {
            "description": "No such version",
            "content": {"application/json": _PAGE_OR_ERROR["application/json"]},
        },
    },
)
async def pinned_widget(
    request: Request,
    version: Annotated[str, Path(description="A released version, such as 1.0.0")],
) -> Response:
    """One released version of the widget (no key): it never changes, so it is cached for
    a year (`immutable`) and a page may pin it with `integrity="sha384-…"` and
    `crossorigin="anonymous"`."""
    release = widget.release(version)
    if release is None:
        return error_response(404, "not_found", "No such widget version.")
    return _script(request, release, PINNED_CACHE)


def _page(html: str, status_code: int = status.HTTP_200_OK) -> HTMLResponse:
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _refusal(request: Request, locale: str, status_code: int) -> Response:
    """An error page in the page's language, or the one error shape for JSON clients."""
    if status_code == status.HTTP_403_FORBIDDEN:
        code, message, keys = "forbidden", "Post from the page itself.", "forbidden"
    elif status_code == status.HTTP_400_BAD_REQUEST:
        code, message, keys = "bad_request", "Say what to stop: stop=<id> or all.", "invalid"
    else:
        code, message, keys = "not_found", "This link is not valid.", "invalid"
    if _wants_json(request):
        return error_response(status_code, code, message)
    return _page(pages.message_page(locale, f"{keys}_title", keys), status_code)


def _same_origin(request: Request, settings: Settings) -> bool:
    """A form posted from another site is refused (CSRF). The token in the path is the
    only credential (no cookie), so another site cannot make a shopper's browser stop
    anything without knowing it; this refuses even that. Browsers send ``Origin`` with a
    POST; a client that sends none is not a browser another site can drive."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc
    if not netloc:  # "null": a sandboxed frame, a data: page
        return False
    allowed = {request.headers.get("host", ""), urlsplit(settings.core.public_base_url).netloc}
    return netloc in allowed


async def _who(session: SessionDep, runtime: RuntimeDep, token: str) -> shopper.Shopper | None:
    subscription_id = runtime.keys.tokens.verify(SHOPPER_PAGE_TOKEN, token)
    if subscription_id is None:
        return None
    return await shopper.shopper(session, runtime.settings, runtime.keys, subscription_id)


def _parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


@router.get(
    "/s/{token}",
    operation_id="showShopperPage",
    tags=["shoppers"],
    response_class=HTMLResponse,
    responses=_PAGE_RESPONSES,
)
async def shopper_page(
    token: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    lang: Annotated[str | None, _LANG] = None,
    stopped: Annotated[str | None, _STOPPED] = None,
    accept_language: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The shopper's own page, linked from every message (no key): the masked contact,
    each product they wait for with their place in line, and a button to stop each, or
    all. The signed token names the subscription whose message carried the link; the
    page shows every subscription of its contact. GET changes nothing."""
    who = await _who(session, runtime, token)
    if who is None:
        return _refusal(request, pages.page_locale(lang, None, accept_language), 404)
    locale = pages.page_locale(lang, who.locale, accept_language)
    alerts = await shopper.alerts(session, who, locale)
    notice = None
    if stopped == "all" and not alerts:
        notice = pages.stopped_notice(locale, None)
    elif stopped:
        target = _parse_id(stopped)
        name = await shopper.stopped_name(session, who, target, locale) if target else None
        if name is not None:
            notice = pages.stopped_notice(locale, name)
    base = runtime.settings.core.public_base_url.rstrip("/")

    def tracked(notification_id: uuid.UUID, position: int) -> str:
        return f"{base}/r/{runtime.keys.tokens.sign(CLICK_TOKEN, notification_id)}/{position}"

    html = pages.shopper_page(
        locale, request.url.path, who.contact_masked, alerts, notice, tracked=tracked
    )
    return _page(html)


def _form(body: bytes, content_type: str) -> dict[str, str]:
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return {}
    if len(body) > _MAX_FORM_BYTES:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    except ValueError:  # more fields than the page's form has: not the page's form
        return {}
    return {name: values[0] for name, values in fields.items() if values}


@router.post(
    "/s/{token}",
    operation_id="stopFromShopperPage",
    tags=["shoppers"],
    response_class=HTMLResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    responses={
        303: {"description": "Stopped (or already stopped): back to the page, which says so"},
        400: {
            "description": "No `stop` field naming `all` or a subscription in a form body",
            "content": _PAGE_OR_ERROR,
        },
        403: {
            "description": "Posted from another site (its Origin is not this service's)",
            "content": _PAGE_OR_ERROR,
        },
        **_PAGE_RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["stop"],
                        "properties": {
                            "stop": {
                                "type": "string",
                                "description": "A subscription id shown on the page, or "
                                "`all` for every one",
                            },
                            "lang": {"type": "string", "enum": list(pages.LOCALES)},
                        },
                    }
                }
            },
        }
    },
)
async def stop_from_shopper_page(
    token: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    accept_language: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The page's buttons: stop one subscription (`stop=<id>`, one the page shows) or all
    of them (`stop=all`), then back to the page (303), which says what was stopped. A
    subscription of another contact is never stopped, whatever id is posted. Posts from
    other sites are refused (403): the page has no cookie, so the token alone authorises,
    and it is checked first."""
    form = _form(await request.body(), request.headers.get("content-type", ""))
    who = await _who(session, runtime, token)
    if who is None:
        return _refusal(request, pages.page_locale(form.get("lang"), None, accept_language), 404)
    locale = pages.page_locale(form.get("lang"), who.locale, accept_language)
    if not _same_origin(request, runtime.settings):
        return _refusal(request, locale, 403)
    choice = form.get("stop", "").strip()
    if choice == "all":
        await shopper.stop_all(session, who)
        stopped = "all"
    else:
        target = _parse_id(choice)
        if target is None:
            return _refusal(request, locale, 400)
        stopped = str(target) if await shopper.stop(session, who, target) else ""
    query = {"lang": locale, **({"stopped": stopped} if stopped else {})}
    return RedirectResponse(
        f"{request.url.path}?{urlencode(query)}",
        status_code=status.HTTP_303_SEE_OTHER,
        headers=PAGE_HEADERS,
    )
