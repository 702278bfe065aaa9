"""A publishable key (``pk_…``) sits in a web page's source, so anybody can copy it: it
reads, lists and deletes nothing, and every endpoint but creating a subscription answers
it 401 or 403 in the one error shape, whatever the Origin. From its own origins it creates
pending subscriptions (CORS granted for exactly the keys' origins), under tight limits."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backinstock import db
from backinstock.auth import service as auth
from backinstock.catalog.models import Product, ProductName
from backinstock.config import RateLimitSettings
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.conftest import ClientFactory
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


# ------------------------------------------------------------------ creating subscriptions
OTHER = "https://other.example"


def page(key: str, origin: str | None = ORIGIN) -> dict[str, str]:
    """What a browser sends from a page: the key, and the page's Origin."""
    return {**bearer(key), **({"Origin": origin} if origin else {})}


def widget_body(**overrides: Any) -> dict[str, Any]:
    """What a storefront widget sends: no fallback, customer id or priority."""
    body = subscription_body(channel="email", contact="ann@mailbox.example")
    for field in ("customer_id", "priority"):
        body.pop(field)
    return {**body, **overrides}


async def test_from_its_origin_it_creates_a_pending_subscription(
    client: httpx.AsyncClient, publishable: str, api_keys: dict[str, str], runtime: Runtime
) -> None:
    response = await client.post("/v1/subscriptions", json=widget_body(), headers=page(publishable))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["position"], body["contact_masked"]) == (
        "pending",
        1,
        "a***@mailbox.example",
    )
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Origin" in response.headers["vary"]
    assert "Retry-After" in response.headers["access-control-expose-headers"]
    async with runtime.sessions() as session:
        kinds = list(await session.scalars(select(Notification.kind)))
    assert kinds == ["confirmation"]

    repeat = await client.post("/v1/subscriptions", json=widget_body(), headers=page(publishable))
    assert repeat.status_code == 200 and repeat.json()["id"] == body["id"]
    assert repeat.json()["status"] == "pending"


@pytest.mark.parametrize(
    "origin",
    [None, OTHER, "null", "http://shop.example", "https://shop.example.evil.example",
     "https://evil.example/https://shop.example"],
)  # fmt: skip
async def test_from_any_other_origin_it_is_refused(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime, origin: str | None
) -> None:
    response = await client.post(
        "/v1/subscriptions", json=widget_body(), headers=page(publishable, origin)
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "access-control-allow-origin" not in response.headers
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Subscription)) == 0


async def test_another_keys_origin_is_granted_cors_but_refused_this_key(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as session:
        await auth.create_key(session, "other-page", [], origins=[OTHER])
    response = await client.post(
        "/v1/subscriptions", json=widget_body(), headers=page(publishable, OTHER)
    )
    assert response.status_code == 403
    # The page can read why: the origin is some key's.
    assert response.headers["access-control-allow-origin"] == OTHER


async def test_a_preflight_is_granted_for_exactly_the_keys_origins(
    make_client: ClientFactory, publishable: str, runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as session:
        await auth.create_key(
            session, "second", [], origins=["https://shop2.example", "http://localhost:5173"]
        )
    client = make_client()
    for origin in (ORIGIN, "https://shop2.example", "http://localhost:5173"):
        granted = await preflight(client, origin)
        assert granted.status_code == 204, origin
        assert granted.headers["access-control-allow-origin"] == origin
        assert granted.headers["access-control-allow-methods"] == "POST"
        assert granted.headers["access-control-allow-headers"] == "Authorization, Content-Type"
        assert int(granted.headers["access-control-max-age"]) > 0
        assert granted.headers["vary"] == "Origin"
    for origin in (OTHER, "null", "http://shop.example", "https://shop.example:8443"):
        refused = await preflight(client, origin)
        assert refused.status_code == 403, origin
        assert "access-control-allow-origin" not in refused.headers
        assert refused.json()["error"]["code"] == "forbidden"
    elsewhere = await preflight(client, ORIGIN, "/v1/restocks")
    assert "access-control-allow-origin" not in elsewhere.headers

    async with db.transaction(runtime.sessions) as session:
        await auth.revoke_key(session, "second")
    fresh = make_client()  # a new process: its origin cache is empty
    assert (await preflight(fresh, "https://shop2.example")).status_code == 403
    assert (await preflight(fresh, ORIGIN)).status_code == 204


async def preflight(
    client: httpx.AsyncClient, origin: str, path: str = "/v1/subscriptions"
) -> httpx.Response:
    return await client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


async def test_errors_reach_the_page_in_the_one_error_shape(
    client: httpx.AsyncClient, publishable: str
) -> None:
    invalid = await client.post(
        "/v1/subscriptions", json=widget_body(contact="not an email"), headers=page(publishable)
    )
    assert invalid.status_code == 422
    assert invalid.json()["error"]["details"][0]["field"] == "contact"
    assert invalid.headers["access-control-allow-origin"] == ORIGIN
    no_key = await client.post("/v1/subscriptions", json=widget_body(), headers={"Origin": ORIGIN})
    assert no_key.status_code == 401
    assert no_key.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fallbacks", [{"channel": "sms", "contact": "+8613800138000"}]),
        ("customer_id", "c-42"),
        ("priority", "vip"),
    ],
)
async def test_what_only_a_server_may_vouch_for_is_refused(
    client: httpx.AsyncClient, publishable: str, field: str, value: Any
) -> None:
    response = await client.post(
        "/v1/subscriptions", json=widget_body(**{field: value}), headers=page(publishable)
    )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


async def test_limits_per_client_ip_answer_429_with_retry_after(
    make_client: ClientFactory, publishable: str
) -> None:
    client = make_client(rate_limits=RateLimitSettings(publishable_rate_limit_per_ip="2/hour"))
    for n in range(2):
        body = widget_body(contact=f"s{n}@mailbox.example")
        ok = await client.post("/v1/subscriptions", json=body, headers=page(publishable))
        assert ok.status_code == 201
    over = await client.post(
        "/v1/subscriptions",
        json=widget_body(contact="s9@mailbox.example"),
        headers=page(publishable),
    )
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
    assert 0 < int(over.headers["retry-after"]) <= 3600
    assert over.headers["access-control-allow-origin"] == ORIGIN
    assert "Retry-After" in over.headers["access-control-expose-headers"]


async def test_limits_per_contact_answer_429_with_retry_after(
    make_client: ClientFactory, publishable: str
) -> None:
    client = make_client(rate_limits=RateLimitSettings(publishable_rate_limit_per_contact="1/hour"))
    first = await client.post("/v1/subscriptions", json=widget_body(), headers=page(publishable))
    assert first.status_code == 201
    same = await client.post("/v1/subscriptions", json=widget_body(), headers=page(publishable))
    assert same.status_code == 200  # a repeat is free
    other_sku = await client.post(
        "/v1/subscriptions", json=widget_body(sku="SKU-2"), headers=page(publishable)
    )
    assert other_sku.status_code == 429 and int(other_sku.headers["retry-after"]) > 0


async def test_a_wechat_request_is_confirmed_by_the_mini_programs_consent(
    client: httpx.AsyncClient, publishable: str, runtime: Runtime
) -> None:
    body = widget_body(channel="wechat", contact="oWeChatUser0000000000000")
    response = await client.post("/v1/subscriptions", json=body, headers=page(publishable))
    assert response.status_code == 201 and response.json()["status"] == "waiting"
    async with runtime.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Notification)) == 0


async def test_a_page_fills_gaps_in_the_catalogue_but_overwrites_nothing(
    client: httpx.AsyncClient, publishable: str, api_keys: dict[str, str], runtime: Runtime
) -> None:
    server = subscription_body(
        contact="+8613800138001",
        product={"name": "红色T恤 M", "url": "https://shop.example/p/1"},
    )
    await client.post("/v1/subscriptions", json=server, headers=bearer(api_keys["subscribe"]))
    hostile = {"name": "Visit evil.example now", "url": "https://shop.example/p/fake"}
    english = {"name": "Red T M"}
    await client.post(
        "/v1/subscriptions", json=widget_body(product=hostile), headers=page(publishable)
    )
    await client.post(
        "/v1/subscriptions",
        json=widget_body(contact="en@mailbox.example", locale="en", product=english),
        headers=page(publishable),
    )
    async with runtime.sessions() as session:
        product = await session.get(Product, "TSHIRT-RED-M")
        names = dict((await session.execute(select(ProductName.locale, ProductName.name))).all())
    assert product is not None
    assert (product.name, product.url) == ("红色T恤 M", "https://shop.example/p/1")
    assert names == {"zh-CN": "红色T恤 M", "en": "Red T M"}


async def test_its_answer_names_no_customer_id_or_fallback(
    client: httpx.AsyncClient, publishable: str, api_keys: dict[str, str]
) -> None:
    server = subscription_body(
        channel="email",
        contact="ann@mailbox.example",
        customer_id="c-42",
        fallbacks=[{"channel": "sms", "contact": "+8613800138000"}],
    )
    made = await client.post(
        "/v1/subscriptions", json=server, headers=bearer(api_keys["subscribe"])
    )
    repeat = await client.post("/v1/subscriptions", json=widget_body(), headers=page(publishable))
    assert repeat.status_code == 200 and repeat.json()["id"] == made.json()["id"]
    assert repeat.json()["customer_id"] is None and repeat.json()["fallbacks"] == []
    assert "c-42" not in repeat.text and "138" not in repeat.text
