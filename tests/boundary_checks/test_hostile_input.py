"""Hostile input through the whole app: every free-text field of every schema refuses what
storage, JSON and email headers cannot hold (422 naming the field, never the value), and
no log line, at DEBUG and in every logger, carries a submitted value or a link token."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backinstock.ops.logging import configure_logging
from backinstock.runtime import Runtime
from tests.boundary import (
    Path,
    dotted,
    email_subscription,
    order_body,
    pool_body,
    post_json,
    restock_body,
    with_value,
)
from tests.conftest import WorkerStarter
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import outbox_count
from tests.workers import settle

# Every client-supplied string of every request schema, by endpoint and path in the body.
FREE_TEXT: list[tuple[str, Any, Path]] = [
    *[
        ("/v1/subscriptions", email_subscription, path)
        for path in [
            ("sku",),
            ("contact",),
            ("fallbacks", 0, "contact"),
            ("locale",),
            ("timezone",),
            ("name",),
            ("customer_id",),
            ("source",),
            ("product", "name"),
            ("product", "url"),
            ("product", "image_url"),
            ("consent", "text_version"),
            ("attributes", "tier"),
        ]
    ],
    *[
        ("/v1/restocks", restock_body, path)
        for path in [
            ("event_id",),
            ("sku",),
            ("location",),
            ("product", "name"),
            ("product", "names", "en"),
        ]
    ],
    *[
        ("/v1/orders", order_body, path)
        for path in [
            ("order_id",),
            ("items", 0, "sku"),
            ("currency",),
            ("coupon_code",),
            ("notification_token",),
            ("customer", "email"),
            ("customer", "phone"),
            ("customer", "wechat_openid"),
            ("customer", "customer_id"),
        ]
    ],
    *[
        ("/v1/coupons/pools", pool_body, path)
        for path in [("name",), ("sku",), ("description",), ("codes", 0)]
    ],
    ("/v1/privacy/erase", lambda: {"contact": "a@mailbox.example"}, ("contact",)),
]
NOT_TEXT = {
    "surrogate": "\ud800",
    "low_surrogate": "\udfff",
    "nul": "\x00",
    "crlf": "\r\n",
    "lf": "\n",
    "escape": "\x1b[2J",
    "c1": "\x85",
    "line_separator": "\u2028",
}


def _case_id(value: object) -> str:
    # A function's name, not its repr: the repr holds an address, which differs between the
    # suite's processes (pytest-xdist requires every process to collect the same ids).
    return str(getattr(value, "__name__", value))


@pytest.mark.parametrize("kind", sorted(NOT_TEXT))
@pytest.mark.parametrize(("endpoint", "base", "path"), FREE_TEXT, ids=_case_id)
async def test_every_free_text_field_refuses_what_storage_cannot_hold(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    endpoint: str,
    base: Any,
    path: Path,
    kind: str,
) -> None:
    value = f"MARK{NOT_TEXT[kind]}ER"
    if path == ("codes", 0) or path[-1] == "sku" or path == ("items", 0, "sku"):
        value = value.replace("MARK", "MARK-")
    response = await post_json(client, api_keys["all"], endpoint, with_value(base(), path, value))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert dotted(path) in [d["field"] for d in error["details"]]
    assert "MARK" not in response.text


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the app, the worker and the libraries, at DEBUG, as JSON."""
    buffer = io.StringIO()
    configure_logging("DEBUG", json=True, stream=buffer)
    try:
        yield buffer
    finally:
        configure_logging("WARNING", json=False)


class Submitted:
    """Values sent, each carrying a unique ASCII marker so any fragment of it is findable."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def __call__(self, hostile: str = "", length: int = 0) -> str:
        marker = f"Mk{len(self.values):04d}q"
        value = marker + hostile
        if length:
            value = (value + "z" * length)[:length]
        self.values.append(value)
        return value

    def leaks(self, line: str) -> list[str]:
        found = []
        for value in self.values:
            forms = {value[:6], json.dumps(value)[1:-1], repr(value)[1:-1]}
            if any(form in line for form in forms if len(form) >= 6):
                found.append(value[:6])
        return found


TOKEN_IN_URL = re.compile(r"/[cursS]/(?!\{token\})[A-Za-z0-9_.~-]{6,}")
LINK = re.compile(r"https?://[^\s\"'<>]*/([ur])/([A-Za-z0-9_.~-]+)")


async def test_no_log_line_carries_a_submitted_value_or_a_link_token(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    captured_logs: io.StringIO,
) -> None:
    key = api_keys["all"]
    sent = Submitted()
    statuses: list[int] = []

    async def post(endpoint: str, body: Any) -> httpx.Response:
        response = await post_json(client, key, endpoint, body)
        statuses.append(response.status_code)
        return response

    # Refused: every free-text field with every kind of text storage cannot hold.
    for endpoint, base, path in FREE_TEXT:
        for bad in NOT_TEXT.values():
            await post(endpoint, with_value(base(), path, sent(bad)))
    # Refused attributes: a key that is not a slug, a value that reads as an email address.
    for attributes in ({sent("\n"): "gold"}, {"note": sent().lower() + "@mailbox.example"}):
        refused = email_subscription(attributes=attributes)
        assert (await post("/v1/subscriptions", refused)).status_code == 422
    # Refused instants: the far future, before the epoch, without an offset, a number.
    for when in ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "2026-11-21T10:00:00", 0]:
        refused = restock_body(event_id=sent(), occurred_at=when)
        assert (await post("/v1/restocks", refused)).status_code == 422
        refused = order_body(order_id=sent(), occurred_at=when)
        assert (await post("/v1/orders", refused)).status_code == 422
    # Not strict JSON, with a value inside: deep nesting, a 100k-digit integer, NaN.
    json_headers = {**bearer(key), "content-type": "application/json"}
    for tail in (b"[" * 10_000 + b"]" * 10_000, b"9" * 100_000, b"NaN"):
        raw = b'{"event_id": "' + sent().encode() + b'", "available": ' + tail + b"}"
        response = await client.post("/v1/restocks", content=raw, headers=json_headers)
        assert response.status_code == 400 and "malformed_json" in response.text
        statuses.append(response.status_code)
    # Accepted, and carried to the worker and the dev outbox: encoded words, maximum
    # lengths, mixed scripts, in names, ids and contacts.
    hostile_name = "=?utf-8?q?Deal=0D=0AReply-To:_x@evil.example=0D=0A=0D=0APHISHING?= 红色"
    for _ in range(3):
        body = subscription_body(
            sku="SKU-1",
            channel="email",
            contact=f"{sent().lower()}@mailbox.example",
            name=sent(length=100),
            customer_id=sent(length=128),
            source=sent(length=64),
            product={"name": sent(hostile_name, length=300), "url": "https://shop.example/p/1"},
            consent={"text_version": sent(length=64), "ip": "203.0.113.9"},
            attributes={"segment": "sensitive-skin", "tier": sent(hostile_name, length=64)},
        )
        assert (await post("/v1/subscriptions", body)).status_code == 201
    start_worker()
    restock = restock_body(event_id=sent(length=128), location=sent(length=64), available=5)
    restock["product"] = {"name": sent("=?utf-8?b?DQpYLUluamVjdGVkOiAx?=", length=300)}
    assert (await post("/v1/restocks", restock)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 3
    order = order_body(
        order_id=sent(length=128),
        coupon_code=sent(length=64),
        notification_token=sent(length=128),
        customer={"email": sent() + "@mailbox.example", "customer_id": sent(length=128)},
    )
    assert (await post("/v1/orders", order)).status_code == 201
    pool = pool_body(name=sent(length=100), description=sent(length=200), codes=[sent()])
    assert (await post("/v1/coupons/pools", pool)).status_code == 201
    assert (await post("/v1/privacy/erase", {"contact": sent() + "@mailbox.example"})).is_success

    # The links a shopper follows, with real tokens from the messages, and forged ones.
    tokens = await _link_tokens(runtime)
    assert tokens
    for kind, token in tokens:
        statuses.append((await client.get(f"/{kind}/{token}")).status_code)
        statuses.append((await client.get(f"/{kind}/{token}?redirect=0")).status_code)
    statuses.append((await client.post(f"/u/{tokens[-1][1]}")).status_code)
    for kind in ("u", "r", "s"):
        statuses.append((await client.get(f"/{kind}/{sent('%0D%0A%00')}")).status_code)
    for query in ("sku", "since", "until", "cursor", "format", "segment"):
        path = f"/v1/stats/funnel?{query}={sent('%00%ED%A0%80')}"
        statuses.append((await client.get(path, headers=bearer(key))).status_code)

    assert all(status < 500 for status in statuses), statuses
    lines = captured_logs.getvalue().splitlines()
    assert sum('"event": "request"' in line for line in lines) >= len(statuses)
    for line in lines:
        assert not sent.leaks(line), line
        assert not TOKEN_IN_URL.search(line), line
        assert not any(token in line for _, token in tokens), line


async def _link_tokens(runtime: Runtime) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from backinstock.senders.models import DevOutboxMessage
    from backinstock.senders.outbox import open_content

    assert await outbox_count(runtime) > 0
    async with runtime.sessions() as session:
        rows = (await session.scalars(select(DevOutboxMessage))).all()
    bodies = [open_content(runtime.keys.cipher, row).body for row in rows]
    return sorted({match.groups() for body in bodies for match in LINK.finditer(body)})


def test_exceptions_are_logged_without_their_messages(captured_logs: io.StringIO) -> None:
    """Exception messages quote values (a database's DETAIL line, SQL parameters, the
    character an encoder refused): logs keep the types and where they were raised."""
    import logging

    import structlog

    def fail() -> None:
        try:
            "Mk-secret\ud800".encode()
        except UnicodeEncodeError as exc:
            raise ValueError("Key (order_id)=(Mk-secret) already exists") from exc

    # A structlog logger and a standard-library one (as uvicorn's, when `serve` leaves the
    # server's loggers to ours with log_config=None; the fakes' servers configure their own).
    stdlib = logging.getLogger("backinstock.tests.stdlib")
    for logger in (structlog.get_logger("backinstock.test"), stdlib):
        try:
            fail()
        except ValueError as exc:
            logger.error("Exception in ASGI application", exc_info=exc)
    lines = captured_logs.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        entry = json.loads(line)
        assert "Mk-secret" not in line and "exc_info" not in entry
        assert entry["exc_type"] == "ValueError <- UnicodeEncodeError"
        assert any("test_hostile_input.py" in frame for frame in entry["exc_frames"])
