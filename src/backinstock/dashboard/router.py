"""The marketer's dashboard: sign in with a stats key, then a page of charts.

The page holds no figures itself: its script reads the same ``/v1/stats/*`` endpoints as API
clients do, carried by the session cookie. The HTML pages are not part of the API contract,
so they stay out of the OpenAPI document.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, FastAPI, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.staticfiles import StaticFiles
from starlette.types import Scope as AsgiScope

from backinstock.auth.service import KeyCache, Principal, Scope, authenticate
from backinstock.config import Rate, Settings
from backinstock.dashboard import pages
from backinstock.dashboard import session as dashboard_session
from backinstock.dashboard.deps import SessionCookieDep, stats_reader
from backinstock.deps import BearerDep, RuntimeDep, SessionDep

router = APIRouter(include_in_schema=False)

LOGIN_PATH = "/dashboard/login"
DASHBOARD_PATH = "/dashboard"
# Inline scripts and styles are refused: the pages carry none, so an injected one cannot run.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Keys carry 256 random bits, so this limit is about load, not guessing.
LOGIN_RATE = Rate(limit=30, window_seconds=60)
_MAX_FORM_BYTES = 4096


def _page(
    html: str, status_code: int = status.HTTP_200_OK, headers: dict[str, str] | None = None
) -> HTMLResponse:
    return HTMLResponse(html, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})})


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=status.HTTP_303_SEE_OTHER, headers=PAGE_HEADERS)


def _login_page(
    settings: Settings,
    message: str | None,
    status_code: int,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    lifetime = settings.dashboard.dashboard_session_seconds
    return _page(pages.login(lifetime, message), status_code, headers)


def _cookie_options(settings: Settings) -> dict[str, Any]:
    return {
        "path": "/",
        "httponly": True,
        "samesite": "strict",
        "secure": settings.core.public_base_url.startswith("https://"),
    }


def _same_origin(request: Request, settings: Settings) -> bool:
    """A form posted from another site is refused (login CSRF). Browsers send ``Origin`` on
    every POST; its absence means a non-browser client, which cannot be forged into it."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    netloc = urlsplit(origin).netloc
    allowed = {request.headers.get("host", ""), urlsplit(settings.core.public_base_url).netloc}
    return netloc in allowed


async def _submitted_key(request: Request) -> str | None:
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        return None
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    except ValueError:  # more fields than the form has: no key was sent
        return None
    values = fields.get("key") or [""]
    return values[0].strip() or None


async def _check_key(request: Request, session: AsyncSession, key: str | None) -> Principal | str:
    """The key's principal, or why it cannot sign in. Saying that a key lacks the scope
    tells its holder nothing the API would not (403) and saves them a guess."""
    if not key:
        return "Enter a stats key."
    cache: KeyCache = request.app.state.key_cache
    principal = await authenticate(session, key, cache)
    if principal is None:
        return "That key is unknown or has been revoked."
    if Scope.STATS.value not in principal.scopes:
        return "That key lacks the stats scope; ask an operator for one created with --scope stats."
    return principal


@router.get(LOGIN_PATH)
async def login_form(
    session: SessionDep, runtime: RuntimeDep, cookie: SessionCookieDep
) -> Response:
    lifetime = runtime.settings.dashboard.dashboard_session_seconds
    if await dashboard_session.principal_from_cookie(session, runtime.keys.timed, cookie, lifetime):
        return _redirect(DASHBOARD_PATH)
    return _login_page(runtime.settings, None, status.HTTP_200_OK)


@router.post(LOGIN_PATH)
async def login(request: Request, session: SessionDep, runtime: RuntimeDep) -> Response:
    settings = runtime.settings
    if not _same_origin(request, settings):
        return _login_page(settings, "Sign in from this site's own form.", 403)
    client_ip = request.client.host if request.client else "unknown"
    retry_after = await runtime.limiter.hit(f"dashboard-login:{client_ip}", LOGIN_RATE)
    if retry_after is not None:
        message = "Too many attempts; wait a minute and try again."
        return _login_page(settings, message, 429, {"Retry-After": str(max(1, retry_after))})
    principal = await _check_key(request, session, await _submitted_key(request))
    if isinstance(principal, str):  # the page says why, and never shows the key again
        return _login_page(settings, principal, status.HTTP_401_UNAUTHORIZED)
    lifetime = settings.dashboard.dashboard_session_seconds
    response = _redirect(DASHBOARD_PATH)
    response.set_cookie(
        dashboard_session.COOKIE_NAME,
        await dashboard_session.issue(session, runtime.keys.timed, principal, lifetime),
        max_age=lifetime,
        **_cookie_options(settings),
    )
    return response


@router.post("/dashboard/logout")
async def logout(
    request: Request, session: SessionDep, runtime: RuntimeDep, cookie: SessionCookieDep
) -> Response:
    """Ends the session on the server, then asks the browser to forget the cookie: a copy
    of it is refused from now on."""
    if not _same_origin(request, runtime.settings):
        return _login_page(runtime.settings, "Sign out from this site's own page.", 403)
    await dashboard_session.end(session, runtime.keys.timed, cookie)
    response = _redirect(LOGIN_PATH)
    response.delete_cookie(dashboard_session.COOKIE_NAME, **_cookie_options(runtime.settings))
    return response


@router.get(DASHBOARD_PATH)
async def dashboard(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    credentials: BearerDep,
    cookie: SessionCookieDep,
) -> Response:
    """A browser without a valid session goes to the sign-in form; a client sending a stats
    key (e.g. a proxy that adds it) gets the page, and a bad key gets the API's 401/403."""
    if credentials is not None:
        principal = await stats_reader(request, session, runtime, credentials, None)
    else:
        lifetime = runtime.settings.dashboard.dashboard_session_seconds
        found = await dashboard_session.principal_from_cookie(
            session, runtime.keys.timed, cookie, lifetime
        )
        if found is None:
            response = _redirect(LOGIN_PATH)
            if cookie:  # expired, tampered or of a revoked key: drop it
                response.delete_cookie(
                    dashboard_session.COOKIE_NAME, **_cookie_options(runtime.settings)
                )
            return response
        principal = found
    return _page(pages.dashboard(principal.name))


class _StaticFiles(StaticFiles):
    """Static files with long cache lifetimes; their URLs carry a content hash."""

    async def get_response(self, path: str, scope: AsgiScope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (status.HTTP_200_OK, status.HTTP_304_NOT_MODIFIED):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(
        pages.STATIC_PREFIX,
        _StaticFiles(directory=pages.STATIC_DIR),
        name="dashboard-static",
    )
