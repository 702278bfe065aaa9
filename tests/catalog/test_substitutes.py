"""A product's substitutes: the list an inventory or admin key keeps
(``/v1/products/{sku}/substitutes``), and what shoppers are shown of it while the product is
sold out: the substitutes in stock now, in the order listed, named in their own locale, in
the subscribe answer and on their own page (``/s/{token}``)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from backinstock import db
from backinstock.auth import service as auth
from backinstock.identity import SHOPPER_PAGE_TOKEN
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.helpers import bearer, phone, subscription_body
from tests.workers import settle

SKU = "SKU-1"
ORIGIN = "https://shop.example"


def path(sku: str = SKU) -> str:
    return f"/v1/products/{sku}/substitutes"


async def put(client: httpx.AsyncClient, key: str, body: Any, sku: str = SKU) -> httpx.Response:
    return await client.put(path(sku), json=body, headers=bearer(key))


async def listed(client: httpx.AsyncClient, key: str, sku: str = SKU) -> list[dict[str, Any]]:
    response = await client.get(path(sku), headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.json()["sku"] == sku
    return list(response.json()["substitutes"])


async def stock(
    client: httpx.AsyncClient,
    key: str,
    sku: str,
    available: int,
    *,
    location: str = "main",
    product: dict[str, Any] | None = None,
) -> None:
    body: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "sku": sku,
        "available": available,
        "location": location,
    }
    if product is not None:
        body["product"] = product
    response = await client.post("/v1/restocks", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text


async def subscribe(
    client: httpx.AsyncClient, key: str, n: int, locale: str, sku: str = SKU
) -> dict[str, Any]:
    body = subscription_body(sku=sku, contact=phone(n), locale=locale)
    response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def shelves(client: httpx.AsyncClient, key: str) -> None:
    """Four substitutes: A and C in stock (A named in zh-CN and en, C by a default name and
    at two locations), B sold out again, D never stocked."""
    await stock(
        client,
        key,
        "ALT-A",
        3,
        product={
            "names": {"zh-CN": "蓝色T恤 M", "en": "Blue T-shirt M"},
            "url": "https://shop.example/p/a",
        },
    )
    await stock(client, key, "ALT-B", 5, product={"name": "Green T-shirt M"})
    await stock(client, key, "ALT-B", 0)
    await stock(client, key, "ALT-C", 0, location="north", product={"name": "Red T-shirt L"})
    await stock(client, key, "ALT-C", 2, location="south")
    await settle()


# The list itself.


async def test_put_replaces_the_list_and_get_shows_it_with_stock(
    client: httpx.AsyncClient, api_keys: dict[str, str], start_worker: WorkerStarter
) -> None:
    start_worker()
    key = api_keys["inventory"]
    assert await listed(client, key) == [], "a SKU not known yet has none"
    await shelves(client, key)

    response = await put(client, key, {"substitutes": ["ALT-D", "ALT-C", "ALT-B", "ALT-A"]})
    assert response.status_code == 200, response.text
    expected = [
        {"sku": "ALT-D", "in_stock": False},
        {"sku": "ALT-C", "in_stock": True},  # 0 in the north, 2 in the south
        {"sku": "ALT-B", "in_stock": False},
        {"sku": "ALT-A", "in_stock": True},
    ]
    assert response.json() == {"sku": SKU, "substitutes": expected}
    assert await listed(client, api_keys["admin"]) == expected

    replaced = await put(client, api_keys["admin"], {"substitutes": ["ALT-A"]})
    assert replaced.status_code == 200, replaced.text
    assert await listed(client, key) == [{"sku": "ALT-A", "in_stock": True}]
    await stock(client, key, "ALT-A", 0)
    await settle()
    assert await listed(client, key) == [{"sku": "ALT-A", "in_stock": False}]

    emptied = await put(client, key, {"substitutes": []})
    assert emptied.json() == {"sku": SKU, "substitutes": []}
    assert await listed(client, key) == []


async def test_ten_is_the_most_and_lists_are_per_product(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["inventory"]
    ten = [f"ALT-{i}" for i in range(10)]
    assert (await put(client, key, {"substitutes": ten})).status_code == 200
    assert (await put(client, key, {"substitutes": ["SKU-1"]}, sku="SKU-2")).status_code == 200
    assert [s["sku"] for s in await listed(client, key)] == ten
    assert await listed(client, key, sku="SKU-2") == [{"sku": "SKU-1", "in_stock": False}]


def _refusals() -> list[Any]:
    long_sku = "X" * 129
    return [
        pytest.param({"substitutes": [f"ALT-{i}" for i in range(11)]}, "substitutes", id="11"),
        pytest.param({"substitutes": ["ALT-A", SKU]}, "substitutes.1", id="itself"),
        pytest.param({"substitutes": ["ALT-A", "ALT-B", "ALT-A"]}, "substitutes.2", id="twice"),
        pytest.param({"substitutes": ["ALT A"]}, "substitutes.0", id="space"),
        pytest.param({"substitutes": [""]}, "substitutes.0", id="empty-sku"),
        pytest.param({"substitutes": [long_sku]}, "substitutes.0", id="129-chars"),
        pytest.param({"substitutes": ["蓝色"]}, "substitutes.0", id="not-ascii"),
        pytest.param({"substitutes": [42]}, "substitutes.0", id="number"),
        pytest.param({"substitutes": [None]}, "substitutes.0", id="null-item"),
        pytest.param({"substitutes": "ALT-A"}, "substitutes", id="a-string"),
        pytest.param({"substitutes": None}, "substitutes", id="null"),
        pytest.param({}, "substitutes", id="missing"),
        pytest.param({"substitutes": [], "note": "x"}, "note", id="extra-field"),
        pytest.param(["ALT-A"], "body", id="a-list"),
    ]


@pytest.mark.parametrize(("body", "field"), _refusals())
async def test_every_refusal_is_a_422_naming_the_field_and_keeps_the_list(
    client: httpx.AsyncClient, api_keys: dict[str, str], body: Any, field: str
) -> None:
    key = api_keys["inventory"]
    assert (await put(client, key, {"substitutes": ["ALT-Z"]})).status_code == 200
    response = await put(client, key, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert field in [d["field"] for d in error["details"]], error
    assert await listed(client, key) == [{"sku": "ALT-Z", "in_stock": False}]


async def test_a_sku_in_the_path_is_checked_like_any_sku(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key = api_keys["inventory"]
    response = await client.get(path("X" * 129), headers=bearer(key))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "sku"
    slashed = await put(client, key, {"substitutes": ["ALT-A"]}, sku="SHOES/42")
    assert slashed.status_code == 200, slashed.text
    encoded = await client.get(path("SHOES%2F42"), headers=bearer(key))
    assert encoded.json() == {
        "sku": "SHOES/42",
        "substitutes": [{"sku": "ALT-A", "in_stock": False}],
    }


@pytest.mark.parametrize("scope", ["subscribe", "stats"])
async def test_other_scopes_are_refused_403(
    client: httpx.AsyncClient, api_keys: dict[str, str], scope: str
) -> None:
    key = api_keys[scope]
    for response in (
        await client.get(path(), headers=bearer(key)),
        await put(client, key, {"substitutes": ["ALT-A"]}),
    ):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert "'inventory' or 'admin'" in error["message"]
    assert await listed(client, api_keys["admin"]) == [], "nothing was written"


async def test_a_publishable_key_is_refused_and_no_key_or_an_unknown_one_is_401(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as session:
        publishable = await auth.create_key(session, "storefront-page", [], origins=[ORIGIN])
    page = {**bearer(publishable), "Origin": ORIGIN}
    refused = await client.put(path(), json={"substitutes": ["ALT-A"]}, headers=page)
    assert refused.status_code == 403, refused.text
    assert "publishable key" in refused.json()["error"]["message"]
    assert (await client.get(path(), headers=page)).status_code == 403
    assert (await client.get(path())).status_code == 401
    unknown = await client.get(path(), headers=bearer("bis_unknown"))
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "unauthorized"


# What shoppers are shown.


async def test_the_subscribe_answer_names_substitutes_in_stock_in_order_and_locale(
    client: httpx.AsyncClient, api_keys: dict[str, str], start_worker: WorkerStarter
) -> None:
    start_worker()
    key = api_keys["all"]
    await shelves(client, key)
    listing = {"substitutes": ["ALT-D", "ALT-C", "ALT-B", "ALT-A"]}
    assert (await put(client, key, listing)).status_code == 200

    zh = await subscribe(client, key, 1, "zh-CN")
    assert zh["substitutes"] == [
        {"sku": "ALT-C", "name": "Red T-shirt L", "url": None},
        {"sku": "ALT-A", "name": "蓝色T恤 M", "url": "https://shop.example/p/a"},
    ]
    en_gb = await subscribe(client, key, 2, "en-GB")  # no en-GB name: the language's
    assert [s["name"] for s in en_gb["substitutes"]] == ["Red T-shirt L", "Blue T-shirt M"]
    again = await subscribe(client, key, 1, "zh-CN")
    assert again["id"] == zh["id"] and again["substitutes"] == zh["substitutes"], "a repeat too"

    assert (await put(client, key, {"substitutes": ["ALT-A", "ALT-C"]})).status_code == 200
    reordered = await subscribe(client, key, 3, "en")
    assert [s["sku"] for s in reordered["substitutes"]] == ["ALT-A", "ALT-C"]

    assert (await put(client, key, {"substitutes": []})).status_code == 200
    assert (await subscribe(client, key, 4, "en"))["substitutes"] == []


async def test_nothing_is_named_while_the_product_is_in_stock_or_has_no_list(
    client: httpx.AsyncClient, api_keys: dict[str, str], start_worker: WorkerStarter
) -> None:
    start_worker()
    key = api_keys["all"]
    await shelves(client, key)
    assert (await subscribe(client, key, 1, "en"))["substitutes"] == [], "no list"
    assert (await put(client, key, {"substitutes": ["ALT-A"]})).status_code == 200
    await stock(client, key, SKU, 4)
    await settle()
    assert (await subscribe(client, key, 2, "en"))["substitutes"] == [], "in stock"
    await stock(client, key, SKU, 0)
    await settle()
    assert [s["sku"] for s in (await subscribe(client, key, 3, "en"))["substitutes"]] == ["ALT-A"]


async def test_a_web_page_subscribing_is_shown_them_too(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    async with db.transaction(runtime.sessions) as session:
        publishable = await auth.create_key(session, "storefront-page", [], origins=[ORIGIN])
    key = api_keys["all"]
    await stock(client, key, "ALT-A", 1, product={"name": "Blue T-shirt M"})
    assert (await put(client, key, {"substitutes": ["ALT-A"]})).status_code == 200
    body = {"sku": SKU, "channel": "email", "contact": "ann@mailbox.example", "locale": "en"}
    response = await client.post(
        "/v1/subscriptions", json=body, headers={**bearer(publishable), "Origin": ORIGIN}
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    assert response.json()["substitutes"] == [
        {"sku": "ALT-A", "name": "Blue T-shirt M", "url": None}
    ]


def page_path(runtime: Runtime, sub: dict[str, Any]) -> str:
    return f"/s/{runtime.keys.tokens.sign(SHOPPER_PAGE_TOKEN, uuid.UUID(sub['id']))}"


def instead_section(html: str, sku: str) -> str:
    """The part of the page's card for ``sku`` that names its substitutes ('' if none)."""
    card = html.split(f'<li class="card watch" data-sku="{sku}">', 1)[1].split("</form>", 1)[0]
    if '<div class="instead">' not in card:
        return ""
    return card.split('<div class="instead">', 1)[1].split("</div>", 1)[0]


async def test_the_shoppers_page_names_them_in_its_language(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    start_worker()
    key = api_keys["all"]
    await shelves(client, key)
    assert (await put(client, key, {"substitutes": ["ALT-B", "ALT-A", "ALT-C"]})).status_code == 200
    sub = await subscribe(client, key, 1, "zh-CN")
    await subscribe(client, key, 1, "zh-CN", sku="SKU-2")  # sold out, no list
    page = page_path(runtime, sub)

    zh = (await client.get(page)).text
    section = instead_section(zh, SKU)
    assert "现在有货的替代商品：" in section
    assert section.index("蓝色T恤 M") < section.index("Red T-shirt L"), "in the order listed"
    assert '<a href="https://shop.example/p/a" rel="noopener noreferrer">蓝色T恤 M</a>' in section
    assert '<li data-sku="ALT-C">Red T-shirt L</li>' in section, "no link: the name as text"
    assert "ALT-B" not in section and "Green" not in section, "sold out: not named"
    assert instead_section(zh, "SKU-2") == ""

    en = (await client.get(f"{page}?lang=en")).text
    section = instead_section(en, SKU)
    assert "In stock now instead:" in section
    assert ">Blue T-shirt M</a>" in section and "蓝色" not in section
    assert "Red T-shirt L" in section

    assert (await put(client, key, {"substitutes": []})).status_code == 200
    emptied = (await client.get(f"{page}?lang=en")).text
    assert instead_section(emptied, SKU) == "" and "In stock now instead:" not in emptied
