"""Every field's limit at the API, walked: the maximum is accepted, one more is a 422 naming
the field. The limits are what the storage columns and the providers take, so an accepted
value can never fail a batch INSERT further down (a dev-outbox row, a product row)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from backinstock.contacts import MAX_MASK_CHARS, Channel, mask, normalize
from backinstock.dispatch.render import MessageContext, render
from backinstock.runtime import Runtime
from backinstock.senders.models import DevOutboxMessage
from backinstock.senders.outbox import open_content
from tests.boundary import (
    Body,
    Path,
    dotted,
    email_of_length,
    email_subscription,
    order_body,
    pool_body,
    post_json,
    restock_body,
    unlimited_client,
    with_value,
)
from tests.conftest import WorkerStarter
from tests.restocks.helpers import outbox_count
from tests.workers import settle

SUBJECT_MAX_CHARS = 300


@dataclass(frozen=True)
class Limit:
    endpoint: str
    base: Callable[[], Body]
    path: Path
    at_most: Callable[[], Any]  # the largest value the API takes
    one_more: Callable[[], Any]  # the smallest step past it
    ok: int  # the answer to the largest value


def text(
    endpoint: str, base: Callable[[], Body], path: Path, n: int, ok: int, c: str = "x"
) -> Limit:
    return Limit(endpoint, base, path, lambda: c * n, lambda: c * (n + 1), ok)


def url(n: int) -> str:
    return "https://shop.example/p/" + "a" * (n - len("https://shop.example/p/"))


def locale(n: int) -> str:
    value = "en"
    while len(value) + 9 <= n:
        value += "-aaaaaaaa"
    return value + ("-" + "a" * (n - len(value) - 1) if n > len(value) else "")


def emails(n: int) -> list[dict[str, str]]:
    return [{"channel": "email", "contact": f"f{i}@mailbox.example"} for i in range(n)]


def names(n: int) -> dict[str, str]:
    return {f"en-{i:02d}": f"Name {i}" for i in range(n)}


def items(n: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU-{i}", "quantity": 1, "unit_price": "1.00"} for i in range(n)]


SUB, RESTOCK, ORDER, POOL = "/v1/subscriptions", "/v1/restocks", "/v1/orders", "/v1/coupons/pools"
LIMITS: list[Limit] = [
    # Subscriptions (201): columns of subscriptions and products, contacts per channel.
    text(SUB, email_subscription, ("sku",), 128, 201, "S"),
    Limit(SUB, email_subscription, ("contact",), lambda: email_of_length(254),
          lambda: email_of_length(255), 201),
    Limit(SUB, email_subscription, ("fallbacks", 0, "contact"), lambda: email_of_length(254),
          lambda: email_of_length(255), 201),
    Limit(SUB, email_subscription, ("fallbacks",), lambda: emails(3), lambda: emails(4), 201),
    Limit(SUB, lambda: email_subscription(channel="wechat"), ("contact",), lambda: "o" * 64,
          lambda: "o" * 65, 201),
    Limit(SUB, email_subscription, ("locale",), lambda: locale(35), lambda: locale(36), 201),
    text(SUB, email_subscription, ("name",), 100, 201, "名"),
    text(SUB, email_subscription, ("customer_id",), 128, 201),
    text(SUB, email_subscription, ("source",), 64, 201),
    text(SUB, email_subscription, ("product", "name"), 300, 201, "红"),
    Limit(SUB, email_subscription, ("product", "url"), lambda: url(2048), lambda: url(2049), 201),
    Limit(SUB, email_subscription, ("product", "image_url"), lambda: url(2048),
          lambda: url(2049), 201),
    text(SUB, email_subscription, ("consent", "text_version"), 64, 201),
    Limit(SUB, email_subscription, ("consent", "wechat_messages"), lambda: 100, lambda: 101, 201),
    # Stock levels (202).
    text(RESTOCK, restock_body, ("event_id",), 128, 202),
    text(RESTOCK, restock_body, ("sku",), 128, 202, "S"),
    text(RESTOCK, restock_body, ("location",), 64, 202),
    Limit(RESTOCK, restock_body, ("available",), lambda: 10**9, lambda: 10**9 + 1, 202),
    text(RESTOCK, restock_body, ("product", "name"), 300, 202, "红"),
    text(RESTOCK, restock_body, ("product", "names", "zh-CN"), 300, 202, "红"),
    Limit(RESTOCK, restock_body, ("product", "names"), lambda: names(20), lambda: names(21), 202),
    # Orders (201).
    text(ORDER, order_body, ("order_id",), 128, 201),
    Limit(ORDER, order_body, ("items",), lambda: items(500), lambda: items(501), 201),
    text(ORDER, order_body, ("items", 0, "sku"), 128, 201, "S"),
    Limit(ORDER, order_body, ("items", 0, "quantity"), lambda: 10**6, lambda: 10**6 + 1, 201),
    Limit(ORDER, order_body, ("items", 0, "unit_price"), lambda: "1000000000",
          lambda: "1000000000.0001", 201),
    Limit(ORDER, order_body, ("items", 0, "unit_price"), lambda: "0.0001", lambda: "0.00001",
          201),
    text(ORDER, order_body, ("coupon_code",), 64, 201),
    text(ORDER, order_body, ("notification_token",), 128, 201),
    Limit(ORDER, order_body, ("customer", "email"), lambda: email_of_length(254),
          lambda: "e" * 321, 201),
    text(ORDER, order_body, ("customer", "phone"), 64, 201, "1"),
    text(ORDER, order_body, ("customer", "wechat_openid"), 64, 201, "o"),
    text(ORDER, order_body, ("customer", "customer_id"), 128, 201),
    # Coupon pools (201).
    text(POOL, pool_body, ("name",), 100, 201),
    text(POOL, pool_body, ("description",), 200, 201),
    text(POOL, pool_body, ("codes", 0), 64, 201, "C"),
    Limit(POOL, pool_body, ("codes",), lambda: [f"{i:05d}" for i in range(100_000)],
          lambda: [f"{i:06d}" for i in range(100_001)], 201),
    # Erasure (200): the longest contact a subscription can hold.
    Limit("/v1/privacy/erase", lambda: {"contact": "a@mailbox.example"}, ("contact",),
          lambda: email_of_length(254), lambda: email_of_length(255), 200),
]  # fmt: skip


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with unlimited_client(runtime) as c:
        yield c


@pytest.mark.parametrize(
    "limit", LIMITS, ids=[f"{x.endpoint}:{dotted(x.path)}:{x.ok}" for x in LIMITS]
)
async def test_the_maximum_is_accepted_and_one_more_is_refused(
    client: httpx.AsyncClient, api_keys: dict[str, str], limit: Limit
) -> None:
    key = api_keys["all"]
    largest = with_value(limit.base(), limit.path, limit.at_most())
    accepted = await post_json(client, key, limit.endpoint, largest)
    assert accepted.status_code == limit.ok, accepted.text[:500]
    too_large = with_value(limit.base(), limit.path, limit.one_more())
    refused = await post_json(client, key, limit.endpoint, too_large)
    assert refused.status_code == 422, refused.text[:500]
    assert dotted(limit.path) in [d["field"] for d in refused.json()["error"]["details"]]


def test_the_longest_mask_fits_where_masks_are_stored() -> None:
    column = DevOutboxMessage.__table__.c.recipient_masked.type.length
    assert column >= MAX_MASK_CHARS
    for local_length in (1, 64):
        longest = normalize(Channel.EMAIL, email_of_length(254, local_length))
        masked = mask(Channel.EMAIL, longest)
        assert len(masked) <= MAX_MASK_CHARS and masked.startswith("a***@")
        assert masked.endswith(".example")
    assert mask(Channel.EMAIL, "zhang@example.com") == "z***@example.com"


@pytest.mark.parametrize("locale", ["en", "zh-CN", "fr"])
@pytest.mark.parametrize("kind", ["restock", "followup"])
def test_every_subject_stays_short_with_the_longest_names(locale: str, kind: str) -> None:
    # The templates shorten long names: a subject stays readable in a mail client's list
    # (stored sealed, so no column limits it any more).
    column = SUBJECT_MAX_CHARS
    context = MessageContext(
        name="名" * 100,
        product_name="红" * 300,
        link="https://shop.example/r/token",
        unsubscribe_url="https://shop.example/u/token",
        level=999_999_999,
        queue_size=2_000_000_000,
        kind=kind,
        coupon_code="C" * 64,
        coupon_description="减" * 200,
    )
    subject = render("email", locale, context).subject
    assert subject is not None and "红" * 90 in subject
    assert len(subject) <= column


async def test_the_longest_values_reach_the_dev_outbox(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    """The batch that one 300-character product name or a long address used to break."""
    key = api_keys["all"]
    for i, locale_ in enumerate(["en", "zh-CN"]):
        body = email_subscription(
            sku="SKU-1",
            contact=email_of_length(254 - i, local_length=1),
            fallbacks=[],
            locale=locale_,
            name="名" * 100,
            customer_id="c" * 128,
            source="s" * 64,
            product={"name": "红" * 300, "url": url(2048)},
        )
        response = await post_json(client, key, "/v1/subscriptions", body)
        assert response.status_code == 201, response.text[:300]
        assert len(response.json()["contact_masked"]) <= MAX_MASK_CHARS
    start_worker()
    # The stock event renames the product in both shoppers' locales, at the longest.
    longest = {"names": {"en": "货" * 300, "zh-CN": "货" * 300}}
    restock = restock_body(event_id="e" * 128, location="l" * 64, available=10**9, product=longest)
    assert (await post_json(client, key, "/v1/restocks", restock)).status_code == 202
    await settle()
    assert await outbox_count(runtime) == 2
    async with runtime.sessions() as session:
        rows = (await session.scalars(select(DevOutboxMessage))).all()
    assert all(len(row.recipient_masked) <= MAX_MASK_CHARS for row in rows)
    subjects = [open_content(runtime.keys.cipher, row).subject for row in rows]
    assert all(subject and "货" * 90 in subject for subject in subjects)


async def test_the_level_summed_over_locations_stays_within_its_column(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    """Each location may hold 1e9, and so may the SKU: three full locations made a 32-bit
    level column overflow (500 on PostgreSQL)."""
    key = api_keys["inventory"]

    async def level(location: str, available: int, event_id: str) -> httpx.Response:
        body = restock_body(event_id=event_id, location=location, available=available)
        return await post_json(client, key, "/v1/restocks", body)

    assert (await level("a", 600_000_000, "e-a")).json()["available"] == 600_000_000
    assert (await level("b", 400_000_000, "e-b")).json()["available"] == 10**9
    refused = await level("c", 1, "e-c")
    assert refused.status_code == 422, refused.text
    assert [d["field"] for d in refused.json()["error"]["details"]] == ["available"]
    # Nothing of the refused event was kept: its id is free, and the level unchanged.
    lower = await level("a", 599_999_999, "e-c")
    assert lower.status_code == 202 and lower.json()["available"] == 999_999_999
