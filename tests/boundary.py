"""Helpers for tests that drive the API's boundary: request bodies of every schema, a client
without rate limits, and values of exact lengths."""

from __future__ import annotations

import json
from typing import Any

import httpx

from backinstock.config import RateLimitSettings
from backinstock.runtime import Runtime
from tests import apps
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import at

Body = dict[str, Any]
Path = tuple[str | int, ...]


def email_subscription(**overrides: Any) -> Body:
    fallbacks = [{"channel": "email", "contact": "fallback@mailbox.example"}]
    body = subscription_body(channel="email", contact="a@mailbox.example", fallbacks=fallbacks)
    return {**body, **overrides}


def restock_body(**overrides: Any) -> Body:
    return {"event_id": "e-1", "sku": "SKU-1", "available": 1, "occurred_at": at(0), **overrides}


def order_body(**overrides: Any) -> Body:
    items = [{"sku": "SKU-1", "quantity": 1, "unit_price": "99.00"}]
    return {"order_id": "o-1", "items": items, "currency": "CNY", "customer": {}, **overrides}


def pool_body(**overrides: Any) -> Body:
    return {"name": "pool", "description": "10% off", "codes": ["CODE-1"], **overrides}


def with_value(body: Body, path: Path, value: Any) -> Body:
    target: Any = body
    for step in path[:-1]:
        target = target.setdefault(step, {}) if isinstance(step, str) else target[step]
    target[path[-1]] = value
    return body


def dotted(path: Path) -> str:
    return ".".join(str(step) for step in path)


def unlimited_client(runtime: Runtime) -> httpx.AsyncClient:
    """The app with its rate limits off (so every request is judged on its content) and
    app exceptions answered as the server would (500), not raised into the test."""
    unlimited = RateLimitSettings(
        rate_limit_per_ip="",
        rate_limit_per_contact="",
        publishable_rate_limit_per_ip="",
        publishable_rate_limit_per_contact="",
    )
    app = apps.app_for(runtime, rate_limits=unlimited)
    transport = httpx.ASGITransport(
        app=app, raise_app_exceptions=False, client=("198.51.100.7", 40000)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def post_json(client: httpx.AsyncClient, key: str, path: str, body: Any) -> httpx.Response:
    headers = {**bearer(key), "content-type": "application/json"}
    return await client.post(path, content=json.dumps(body), headers=headers)


def email_of_length(length: int, local_length: int = 64) -> str:
    """A valid address of exactly ``length`` characters (up to 254, RFC 5321's limit), with
    a local part of ``local_length`` (at most 64) and labels of at most 63 characters."""
    local = "a" * local_length
    labels, room = [], length - local_length - 1 - len("example")
    while room > 0:
        size = min(63, room - 1)
        if room - size - 1 == 1:  # never leave room for a lone dot
            size -= 1
        labels.append("b" * size)
        room -= size + 1
    address = f"{local}@{'.'.join([*labels, 'example'])}"
    assert len(address) == length, (length, len(address))
    return address
