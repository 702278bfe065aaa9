"""A publishable key (``pk_…``) sits in a web page's source, so anybody can copy it: it
reads, lists and deletes nothing, and every endpoint but creating a subscription answers
it 401 or 403 in the one error shape, whatever the Origin."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from backinstock import db
from backinstock.auth import service as auth
from backinstock.runtime import Runtime
from tests.helpers import bearer, subscription_body

ORIGIN = "https://shop.example"


@pytest.fixture
async def publishable(runtime: Runtime) -> str:
    async with db.transaction(runtime.sessions) as session:
        return await auth.create_key(session, "storefront-page", [], origins=[ORIGIN])


def _secured_operations() -> list[tuple[str, str]]:
    from backinstock.main import create_app

    schema = create_app().openapi()
    return sorted(
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "security" in operation and (method, path) != ("post", "/v1/subscriptions")
    )


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


@pytest.mark.parametrize(("method", "path"), _secured_operations())
async def test_every_other_endpoint_refuses_a_publishable_key(
    client: httpx.AsyncClient, publishable: str, method: str, path: str
) -> None:
    headers = {**bearer(publishable), "Origin": ORIGIN, "content-type": "application/json"}
    response = await client.request(method, _filled(path), headers=headers, content=b"{}")
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden" and "publishable key" in error["message"]


async def test_it_reads_and_deletes_no_subscription(
    client: httpx.AsyncClient, publishable: str, api_keys: dict[str, str]
) -> None:
    made = await client.post(
        "/v1/subscriptions", json=subscription_body(), headers=bearer(api_keys["subscribe"])
    )
    sub_id = made.json()["id"]
    headers = {**bearer(publishable), "Origin": ORIGIN}
    assert (await client.get(f"/v1/subscriptions/{sub_id}", headers=headers)).status_code == 403
    assert (await client.delete(f"/v1/subscriptions/{sub_id}", headers=headers)).status_code == 403
    kept = await client.get(f"/v1/subscriptions/{sub_id}", headers=bearer(api_keys["subscribe"]))
    assert kept.json()["status"] == "waiting"


async def test_the_dashboard_does_not_sign_in_with_it(
    client: httpx.AsyncClient, publishable: str
) -> None:
    response = await client.get("/v1/stats/funnel", headers=bearer(publishable))
    assert response.status_code == 403
    login = await client.post("/dashboard/login", data={"key": publishable})
    assert login.status_code == 401 and "set-cookie" not in login.headers


async def test_a_revoked_or_unknown_one_is_401(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as session:
        await auth.revoke_key(session, "storefront-page")
    fresh = {**bearer("pk_" + "x" * 43), "Origin": ORIGIN}
    response = await client.post("/v1/subscriptions", json=subscription_body(), headers=fresh)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
