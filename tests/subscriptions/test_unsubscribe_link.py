from __future__ import annotations

import uuid

import httpx
import pytest

from backinstock.identity import UNSUBSCRIBE_TOKEN
from backinstock.runtime import Runtime
from tests.helpers import bearer, subscription_body

pytestmark = pytest.mark.asyncio


async def _subscribe(client: httpx.AsyncClient, key: str) -> dict[str, object]:
    response = await client.post("/v1/subscriptions", json=subscription_body(), headers=bearer(key))
    assert response.status_code == 201
    return dict(response.json())


async def test_get_shows_a_one_button_page_and_changes_nothing(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    sub = await _subscribe(client, api_keys["subscribe"])
    token = runtime.keys.tokens.sign(UNSUBSCRIBE_TOKEN, uuid.UUID(str(sub["id"])))
    page = await client.get(f"/u/{token}")
    assert page.status_code == 200
    assert 'method="post"' in page.text and "List-Unsubscribe" in page.text
    still = await client.get(
        f"/v1/subscriptions/{sub['id']}", headers=bearer(api_keys["subscribe"])
    )
    assert still.json()["status"] == "waiting"


async def test_rfc8058_one_click_post_unsubscribes(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    sub = await _subscribe(client, api_keys["subscribe"])
    token = runtime.keys.tokens.sign(UNSUBSCRIBE_TOKEN, uuid.UUID(str(sub["id"])))
    response = await client.post(
        f"/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    after = await client.get(
        f"/v1/subscriptions/{sub['id']}", headers=bearer(api_keys["subscribe"])
    )
    assert after.json()["status"] == "unsubscribed"
    again = await client.post(f"/u/{token}")  # idempotent
    assert again.status_code == 200


async def test_forged_and_cross_purpose_tokens_are_rejected(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    sub = await _subscribe(client, api_keys["subscribe"])
    sub_id = uuid.UUID(str(sub["id"]))
    good = runtime.keys.tokens.sign(UNSUBSCRIBE_TOKEN, sub_id)
    forged = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    other_purpose = runtime.keys.tokens.sign("click", sub_id)
    for token in (forged, other_purpose, "x", "A" * 44, "%00"):
        page = await client.post(f"/u/{token}")
        assert page.status_code == 404
        as_json = await client.post(f"/u/{token}", headers={"accept": "application/json"})
        assert as_json.status_code == 404
        assert as_json.json()["error"]["code"] == "not_found"
    after = await client.get(f"/v1/subscriptions/{sub_id}", headers=bearer(api_keys["subscribe"]))
    assert after.json()["status"] == "waiting"
