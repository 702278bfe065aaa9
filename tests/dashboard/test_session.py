"""The dashboard's sign-in limit and server-side sessions."""

from __future__ import annotations

import httpx

from tests.helpers import fresh_minute

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _login(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/dashboard/login", content=f"key={key}", headers=FORM)


async def test_the_sign_in_limit_says_when_to_retry(client: httpx.AsyncClient) -> None:
    await fresh_minute()
    attempts = [await _login(client, "bis_wrong") for _ in range(31)]
    assert [r.status_code for r in attempts] == [401] * 30 + [429]
    assert 1 <= int(attempts[-1].headers["retry-after"]) <= 61
    assert "Too many attempts" in attempts[-1].text
