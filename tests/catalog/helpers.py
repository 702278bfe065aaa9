from __future__ import annotations

from typing import Any

import httpx

from tests.helpers import bearer

SKU = "SKU-1"


def policy_path(sku: str = SKU) -> str:
    return f"/v1/products/{sku}/policy"


async def put_policy(
    client: httpx.AsyncClient, key: str, body: Any, sku: str = SKU
) -> httpx.Response:
    return await client.put(policy_path(sku), json=body, headers=bearer(key))


async def get_policy(client: httpx.AsyncClient, key: str, sku: str = SKU) -> httpx.Response:
    return await client.get(policy_path(sku), headers=bearer(key))
