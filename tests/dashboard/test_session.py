"""The dashboard's sign-in limit and server-side sessions."""

from __future__ import annotations

import httpx

from backinstock.dashboard import session as dashboard_session
from tests.conftest import ClientFactory

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/dashboard/login", content=f"key={key}", headers=FORM)


async def test_the_sign_in_limit_says_when_to_retry(client: httpx.AsyncClient) -> None:
    attempts = [await _login(client, "bis_wrong") for _ in range(31)]
    assert [r.status_code for r in attempts] == [401] * 30 + [429]
    assert 1 <= int(attempts[-1].headers["retry-after"]) <= 61
    assert "Too many attempts" in attempts[-1].text


async def test_signing_out_ends_the_session_on_the_server(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    browser = make_client()
    assert (await _login(browser, api_keys["stats"])).status_code == 303
    captured = browser.cookies[dashboard_session.COOKIE_NAME]
    assert (await browser.get("/v1/stats/funnel")).status_code == 200

    assert (await browser.post("/dashboard/logout")).status_code == 303

    # The cookie copied before sign-out, replayed from elsewhere (another API process too).
    thief = make_client()
    thief.cookies.set(dashboard_session.COOKIE_NAME, captured)
    figures = await thief.get("/v1/stats/funnel")
    assert figures.status_code == 401
    assert figures.json()["error"]["code"] == "unauthorized"
    assert (await thief.get("/dashboard")).status_code == 303


async def test_signing_out_ends_only_that_session(
    make_client: ClientFactory, api_keys: dict[str, str]
) -> None:
    first, second = make_client(), make_client()
    await _login(first, api_keys["stats"])
    await _login(second, api_keys["stats"])
    await first.post("/dashboard/logout")
    assert (await second.get("/v1/stats/funnel")).status_code == 200
