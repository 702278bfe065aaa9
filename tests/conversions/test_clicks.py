"""The tracked link: counted, redirected with UTM parameters, never an open redirect."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import select

from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.conversions.helpers import (
    SKU,
    outbox_by_subscription,
    subscribe_by_email,
    tracked_token,
)
from tests.restocks.helpers import outbox_count, post_level
from tests.workers import settle


async def _one_token(
    client: httpx.AsyncClient, key: str, runtime: Runtime, start_worker: WorkerStarter
) -> str:
    [sub_id] = await subscribe_by_email(client, key, 1)
    start_worker()
    await post_level(client, key, 1, sku=SKU)
    await settle()
    assert await outbox_count(runtime) == 1
    return tracked_token((await outbox_by_subscription(runtime))[sub_id])


async def _clicks(runtime: Runtime) -> tuple[int, object]:
    async with runtime.sessions() as session:
        row = (
            await session.execute(select(Notification.click_count, Notification.clicked_at))
        ).one()
        return row[0], row[1]


async def test_a_click_is_counted_and_redirects_to_the_product_with_utm(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    token = await _one_token(client, api_keys["all"], runtime, start_worker)
    response = await client.get(f"/r/{token}")
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "shop.example", "/p/1")
    assert parse_qs(target.query) == {
        "color": ["red"],
        "utm_source": ["backinstock"],
        "utm_medium": ["email"],
        "bis_token": [token],
    }
    assert response.headers["cache-control"] == "no-store"
    count, first = await _clicks(runtime)
    assert count == 1 and first is not None

    assert (await client.get(f"/r/{token}?redirect=0")).status_code == 204
    assert await _clicks(runtime) == (2, first), "the first click's time is kept"


async def test_forged_and_foreign_tokens_get_a_404_page_and_count_nothing(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    token = await _one_token(client, api_keys["all"], runtime, start_worker)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    unknown = runtime.keys.tokens.sign("click", uuid.uuid4())
    unsubscribe_token = runtime.keys.tokens.sign("unsubscribe", uuid.uuid4())
    for bad in (forged, unknown, unsubscribe_token, "x", "https:%2F%2Fevil.example"):
        response = await client.get(f"/r/{bad}")
        assert response.status_code == 404, bad
        assert "location" not in response.headers
        if "%2F" not in bad:  # a path that matches no route gets the JSON 404
            assert response.headers["content-type"].startswith("text/html")
    assert await _clicks(runtime) == (0, None)
