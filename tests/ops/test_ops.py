from __future__ import annotations

import httpx
import pytest

from tests.helpers import bearer, subscription_body

pytestmark = pytest.mark.asyncio


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_metrics_count_requests_by_route_without_contacts(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await client.post(
        "/v1/subscriptions", json=subscription_body(), headers=bearer(api_keys["subscribe"])
    )
    text = (await client.get("/metrics")).text
    assert 'route="/v1/subscriptions"' in text
    assert "backinstock_subscriptions_created_total" in text
    assert "13800138000" not in text


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"


async def test_unknown_route_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await client.put("/healthz")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_method_not_allowed_names_every_method_of_the_path(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    # GET and DELETE are separate routes on one path: 405 must list both (RFC 9110).
    response = await client.request(
        "PATCH",
        "/v1/subscriptions/01a22673-f409-77d9-85f7-0f164346d9a3",
        headers=bearer(api_keys["subscribe"]),
    )
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert sorted(m.strip() for m in response.headers["allow"].split(",")) == ["DELETE", "GET"]
