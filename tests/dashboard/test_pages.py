"""The dashboard's sign-in, session cookie, page headers and static files, over HTTP."""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest

from backinstock import db
from backinstock.auth import service as auth
from backinstock.auth.service import Principal
from backinstock.crypto import TimedSigner
from backinstock.dashboard import session as dashboard_session
from backinstock.identity import DASHBOARD_SESSION_TOKEN
from backinstock.runtime import Runtime
from tests.conftest import ClientFactory
from tests.helpers import bearer

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/dashboard/login", content=f"key={key}", headers=FORM)


def _set_cookie(response: httpx.Response) -> str:
    return response.headers["set-cookie"]


async def test_login_with_a_stats_key_opens_the_dashboard_and_the_figures(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await _login(client, api_keys["stats"])

    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = _set_cookie(response)
    assert cookie.startswith(f"{dashboard_session.COOKIE_NAME}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # PUBLIC_BASE_URL is http in tests
    assert api_keys["stats"] not in cookie

    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert 'id="chart-funnel"' in page.text and "k-stats" in page.text
    figures = await client.get("/v1/stats/funnel")
    assert figures.status_code == 200, figures.text


async def test_the_form_is_parsed_with_other_fields_and_url_encoding(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["stats"]
    body = httpx.QueryParams({"key": f"  {key} ", "remember": "1"})
    response = await client.post("/dashboard/login", content=str(body), headers=FORM)
    assert response.status_code == 303


@pytest.mark.parametrize("which", ["subscribe", "inventory", "admin"])
async def test_a_key_without_the_stats_scope_gets_the_form_again(
    client: httpx.AsyncClient, api_keys: dict[str, str], which: str
) -> None:
    response = await _login(client, api_keys[which])

    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "lacks the stats scope" in response.text
    assert 'name="key"' in response.text
    assert api_keys[which] not in response.text


async def test_a_revoked_key_cannot_sign_in(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    async with db.transaction(runtime.sessions) as session:
        await auth.revoke_key(session, "k-stats")

    response = await _login(client, api_keys["stats"])

    assert response.status_code == 401
    assert "unknown or has been revoked" in response.text
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("key", ["bis_not-a-real-key", "", "<script>alert(1)</script>"])
async def test_a_wrong_key_gets_401_and_is_never_echoed(
    client: httpx.AsyncClient, api_keys: dict[str, str], key: str
) -> None:
    response = await client.post(
        "/dashboard/login", content=str(httpx.QueryParams({"key": key})), headers=FORM
    )

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text
    if key:
        assert key not in response.text


async def test_a_json_body_is_not_a_login(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await client.post("/dashboard/login", json={"key": api_keys["stats"]})
    assert response.status_code == 401


async def test_a_form_with_more_fields_than_the_forms_is_no_login(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    padding = "&".join(f"f{i}=1" for i in range(11))
    response = await client.post(
        "/dashboard/login", content=f"{padding}&key={api_keys['stats']}", headers=FORM
    )
    assert response.status_code == 401
    assert 'role="alert"' in response.text


async def test_a_form_posted_from_another_site_is_refused(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    response = await client.post(
        "/dashboard/login",
        content=f"key={api_keys['stats']}",
        headers={**FORM, "Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers

    same_site = await client.post(
        "/dashboard/login",
        content=f"key={api_keys['stats']}",
        headers={**FORM, "Origin": "http://testserver"},
    )
    assert same_site.status_code == 303


async def test_without_a_session_the_dashboard_redirects_to_the_form(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/dashboard")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"

    form = await client.get("/dashboard/login")
    assert form.status_code == 200
    assert 'type="password"' in form.text and 'name="key"' in form.text


async def test_the_form_sends_a_signed_in_browser_on_to_the_dashboard(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _login(client, api_keys["stats"])
    response = await client.get("/dashboard/login")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"


async def test_a_stats_key_in_the_authorization_header_opens_the_dashboard(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    assert (await client.get("/dashboard", headers=bearer(api_keys["stats"]))).status_code == 200
    assert (await client.get("/dashboard", headers=bearer(api_keys["admin"]))).status_code == 403
    wrong = await client.get("/dashboard", headers=bearer("bis_nope"))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("tamper", ["flip", "truncate", "garbage"])
async def test_a_tampered_cookie_is_refused(
    client: httpx.AsyncClient, api_keys: dict[str, str], tamper: str
) -> None:
    await _login(client, api_keys["stats"])
    good = client.cookies[dashboard_session.COOKIE_NAME]
    bad = {
        "flip": good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1],
        "truncate": good[:-6],
        "garbage": "x" * 40,
    }[tamper]
    client.cookies.set(dashboard_session.COOKIE_NAME, bad)

    api = await client.get("/v1/stats/funnel")
    assert api.status_code == 401
    assert api.json()["error"]["code"] == "unauthorized"
    page = await client.get("/dashboard")
    assert page.status_code == 303
    assert page.headers["location"] == "/dashboard/login"
    assert "max-age=0" in page.headers["set-cookie"].lower(), "the bad cookie is dropped"


async def test_an_expired_cookie_is_refused(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _login(client, api_keys["stats"])
    lifetime = runtime.settings.dashboard.dashboard_session_seconds
    live = runtime.keys.timed.verify(
        DASHBOARD_SESSION_TOKEN, client.cookies[dashboard_session.COOKIE_NAME], lifetime
    )
    assert live is not None
    session_id = uuid.UUID(hex=live)
    # The session's row lives on, but the cookie was signed longer than a lifetime ago.
    signed_long_ago = TimedSigner(runtime.keys.timed.ring, clock=lambda: time.time() - lifetime - 1)
    expired = dashboard_session.cookie_for(signed_long_ago, session_id)
    client.cookies.set(dashboard_session.COOKIE_NAME, expired)

    assert (await client.get("/dashboard")).status_code == 303
    assert (await client.get("/v1/stats/funnel")).status_code == 401


async def test_a_cookie_stops_working_when_its_key_is_revoked(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _login(client, api_keys["stats"])
    assert (await client.get("/dashboard")).status_code == 200
    async with db.transaction(runtime.sessions) as session:
        await auth.revoke_key(session, "k-stats")

    assert (await client.get("/dashboard")).status_code == 303
    assert (await client.get("/v1/stats/funnel")).status_code == 401


async def test_a_cookie_from_a_short_lifetime_expires(
    runtime: Runtime, api_keys: dict[str, str]
) -> None:
    async with db.transaction(runtime.sessions) as session:
        keys = await auth.list_keys(session)
    stats = next(k for k in keys if k.name == "k-stats")
    principal = Principal(stats.id, stats.name, frozenset(stats.scopes.split()))
    async with db.transaction(runtime.sessions) as session:
        cookie = await dashboard_session.issue(
            session, runtime.keys.timed, principal, lifetime_seconds=-5
        )
    async with db.transaction(runtime.sessions) as session:
        found = await dashboard_session.principal_from_cookie(
            session, runtime.keys.timed, cookie, lifetime_seconds=-5
        )
    assert found is None


async def test_logout_clears_the_cookie(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _login(client, api_keys["stats"])
    assert (await client.get("/dashboard")).status_code == 200

    response = await client.post("/dashboard/logout")

    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    cleared = _set_cookie(response).lower()
    assert cleared.startswith(f"{dashboard_session.COOKIE_NAME}=")
    assert "max-age=0" in cleared and "httponly" in cleared and "path=/" in cleared
    assert dashboard_session.COOKIE_NAME not in client.cookies
    assert (await client.get("/dashboard")).status_code == 303


async def test_the_cookie_is_secure_when_the_public_url_is_https(
    make_client: ClientFactory, runtime: Runtime, api_keys: dict[str, str]
) -> None:
    https = runtime.settings.core.model_copy(update={"public_base_url": "https://bis.example"})
    client = make_client(core=https)

    response = await _login(client, api_keys["stats"])

    assert response.status_code == 303
    assert "secure" in _set_cookie(response).lower()


async def test_pages_carry_a_strict_content_security_policy(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    login_form = await client.get("/dashboard/login")
    await _login(client, api_keys["stats"])
    page = await client.get("/dashboard")

    for response in (login_form, page):
        csp = response.headers["content-security-policy"]
        assert csp.startswith("default-src 'self'; img-src 'self' data:; style-src 'self'")
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        # Nothing inline for the policy to refuse, and nothing from another origin.
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)
        assert "<style" not in response.text and " style=" not in response.text
        assert not re.search(r"\son[a-z]+=", response.text)
        assert not re.search(r"(src|href)=\"(https?:)?//", response.text)


async def test_the_signed_in_key_name_is_escaped(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    async with db.transaction(runtime.sessions) as session:
        key = await auth.create_key(session, "<b>x</b>", [auth.Scope.STATS])
    await _login(client, key)
    page = await client.get("/dashboard")
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text and "<b>x</b>" not in page.text


async def test_static_files_are_served_with_long_cache_lifetimes(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _login(client, api_keys["stats"])
    page = (await client.get("/dashboard")).text
    urls = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page)
    assert {u.split("?")[0] for u in urls} == {
        "/dashboard/static/dashboard.css",
        "/dashboard/static/dashboard.js",
        "/dashboard/static/filters.js",
        "/dashboard/static/vendor/chart.umd.js",
    }
    for url in urls:
        assert re.search(r"\?v=[0-9a-f]{12}$", url), "versioned, so a year of caching is safe"
        response = await client.get(url.replace("&amp;", "&"))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
    chart = await client.get("/dashboard/static/vendor/chart.umd.js")
    assert chart.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert "Chart.js v4" in chart.text[:200]
    assert (await client.get("/dashboard/static/nope.js")).status_code == 404
    assert (await client.get("/dashboard/static/../router.py")).status_code == 404


async def test_the_pages_are_not_in_the_api_contract(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith("/dashboard")]
