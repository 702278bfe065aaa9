"""X-Forwarded-For is believed only from proxies the operator names: by default a client
(even a local one) cannot choose the IP its rate limits are counted under."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers import bearer, phone, subscription_body
from tests.server import ServerProcess

pytestmark = pytest.mark.asyncio

LIMITED = {"BACKINSTOCK_RATE_LIMIT_PER_IP": "3/minute", "BACKINSTOCK_LOG_LEVEL": "WARNING"}


async def _subscribe_from(client: httpx.AsyncClient, key: str, n: int) -> list[int]:
    """n subscribes, each claiming another client IP."""
    codes = []
    for i in range(n):
        response = await client.post(
            "/v1/subscriptions",
            json=subscription_body(contact=phone(i)),
            headers={**bearer(key), "X-Forwarded-For": f"203.0.113.{i + 1}"},
        )
        codes.append(response.status_code)
    return codes


async def _sign_in_from(client: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    return [
        await client.post(
            "/dashboard/login",
            data={"key": "bis_wrong"},
            headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
        )
        for i in range(n)
    ]


async def test_forwarded_for_is_ignored_unless_a_proxy_is_named(
    api_keys: dict[str, str], tmp_path: Path
) -> None:
    with ServerProcess(LIMITED, tmp_path / "serve.log") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            assert await _subscribe_from(client, api_keys["subscribe"], 4) == [201] * 3 + [429]
            attempts = await _sign_in_from(client, 31)
    assert [r.status_code for r in attempts] == [401] * 30 + [429]
    assert int(attempts[-1].headers["retry-after"]) >= 1


async def test_forwarded_for_is_believed_from_a_named_proxy(
    api_keys: dict[str, str], tmp_path: Path
) -> None:
    env = {**LIMITED, "BACKINSTOCK_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with ServerProcess(env, tmp_path / "serve.log") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            assert await _subscribe_from(client, api_keys["subscribe"], 4) == [201] * 4
