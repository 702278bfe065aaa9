"""A product's name is kept per locale: each shopper's message names the product in their
own locale, else in their language, else by the SKU's first-known (or default) name."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backinstock.catalog.models import Product, ProductName
from backinstock.catalog.service import canonical_locale, name_for
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.conversions.helpers import outbox_by_subscription
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.helpers import post_level
from tests.workers import settle

SKU = "SKU-1"


async def _subscribe(
    client: httpx.AsyncClient, key: str, n: int, locale: str, name: str | None
) -> str:
    product: dict[str, Any] = {"url": "https://shop.example/p/1"}
    if name is not None:
        product["name"] = name
    body = subscription_body(sku=SKU, contact=phone(n), locale=locale, product=product)
    response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_each_shopper_reads_the_name_in_their_locale_or_language(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    zh = await _subscribe(client, key, 1, "zh-CN", "红色T恤 M")
    en = await _subscribe(client, key, 2, "en", "Red T M")
    zh_tw = await _subscribe(client, key, 3, "zh-TW", None)  # same language as zh-CN
    en_gb = await _subscribe(client, key, 4, "en_gb", None)  # same language as en
    fr = await _subscribe(client, key, 5, "fr", None)  # neither: the first-known name
    start_worker()
    assert (await post_level(client, key, 10, sku=SKU)).status_code == 202
    await settle()

    bodies = await outbox_by_subscription(runtime)
    assert "「红色T恤 M」" in bodies[zh] and "Red T M" not in bodies[zh]
    assert "Red T M" in bodies[en] and "红色T恤" not in bodies[en]
    assert "红色T恤 M" in bodies[zh_tw]
    assert "Red T M" in bodies[en_gb]
    assert "红色T恤 M" in bodies[fr]
    async with runtime.sessions() as session:
        default = await session.scalar(select(Product.name).where(Product.sku == SKU))
        names = dict((await session.execute(select(ProductName.locale, ProductName.name))).all())
    assert default == "红色T恤 M"  # the later English name did not replace it
    assert names == {"zh-CN": "红色T恤 M", "en": "Red T M"}


async def test_a_stock_event_names_the_product_per_locale_and_sets_its_default(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    zh = await _subscribe(client, key, 1, "zh-CN", "红T")
    en = await _subscribe(client, key, 2, "en", None)
    fr = await _subscribe(client, key, 3, "fr", None)
    body = {
        "event_id": "e-names",
        "sku": SKU,
        "available": 5,
        "product": {
            "name": "T-shirt rouge M",
            "names": {"zh-CN": "红色T恤 M", "en": "Red T-shirt M"},
        },
    }
    start_worker()
    response = await client.post("/v1/restocks", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    await settle()

    bodies = await outbox_by_subscription(runtime)
    assert "红色T恤 M" in bodies[zh]  # the ERP's name replaced the shopper's
    assert "Red T-shirt M" in bodies[en]
    assert "T-shirt rouge M" in bodies[fr]  # the default name, given without a locale


async def test_a_name_arriving_later_in_a_shoppers_locale_is_the_one_they_read(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    en = await _subscribe(client, key, 1, "en", None)
    await _subscribe(client, key, 2, "zh-CN", "红色T恤 M")
    await _subscribe(client, key, 3, "en-US", "Red T M")
    start_worker()
    await post_level(client, key, 10, sku=SKU)
    await settle()
    assert "Red T M" in (await outbox_by_subscription(runtime))[en]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("zh-cn", "zh-CN"), ("EN", "en"), ("zh_hans_cn", "zh-Hans-CN"), ("es-419", "es-419")],
)
def test_locales_compare_in_their_canonical_form(given: str, canonical: str) -> None:
    assert canonical_locale(given) == canonical


def test_the_fallback_order_is_locale_then_language_then_default() -> None:
    names = [("zh-CN", "红色T恤"), ("en-GB", "Red tee"), ("en", "Red T")]
    assert name_for("en", names, "default") == "Red T"
    assert name_for("en-gb", names, "default") == "Red tee"
    assert name_for("en-AU", names, "default") == "Red tee"  # the first known of the language
    assert name_for("zh-TW", names, "default") == "红色T恤"
    assert name_for("ja", names, "default") == "default"
    assert name_for("ja", [], None) is None


async def test_a_refused_locale_is_named_by_its_place_never_echoed(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    body = {
        "event_id": "e-1",
        "sku": SKU,
        "available": 1,
        "product": {"names": {"MARK\u0000ER": "红色T恤 M"}},
    }
    response = await client.post("/v1/restocks", json=body, headers=bearer(api_keys["all"]))
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["product.names.[key]"]
    assert "MARK" not in response.text
