"""``backinstock demo``: an embedded instance with something to look at.

Everything goes through the real API (in process, over ASGI) and the real workers, so the
demo exercises the same code as production: subscriptions are validated and encrypted, the
restock opens a wave, messages land in the dev outbox, clicks follow tracked links, orders
are attributed and follow-up coupons go out. Contacts are reserved examples: addresses at
example.com (RFC 2606), +1 202-555-01xx numbers (reserved for fiction), made-up openids.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from backinstock import db
from backinstock.auth import service as auth
from backinstock.auth.service import Scope
from backinstock.config import Settings
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Kind, Notification
from backinstock.dispatch.service import CLICK_TOKEN
from backinstock.main import create_app
from backinstock.runtime import Runtime

# Provider settings the demo clears: it must never reach a real phone or mailbox.
PROVIDER_ENV = ("TWILIO_", "SMTP_", "WECHAT_")
PRODUCTS = [
    # sku, name, waiting shoppers
    ("DEMO-TEE-RED-M", "Red T-shirt, M", 40),
    ("DEMO-SNEAKER-42", "Canvas sneakers, 42", 25),
    ("DEMO-MUG-BLUE", "Blue mug", 10),
]
RESTOCKED = 30  # units of the first product that come back
CLICKERS = 14  # of the 30 told, how many follow the link
BUYERS = 6  # of the clickers, how many buy
COUPON_BUYERS = 2  # of the shoppers who got a follow-up coupon, how many use it
FOLLOWUP_AFTER_SECONDS = 2  # the demo's follow-up delay (72 h by default)


class DemoRefused(Exception):
    pass


@dataclass(frozen=True)
class DemoResult:
    stats_key: str
    admin_key: str
    notified: int
    clicks: int
    orders: int
    coupons: int


Advance = Callable[[str], None]


def prepare_environment() -> None:
    """Dev outbox for every channel, no quiet hours (the demo runs at any hour), and
    follow-ups after seconds instead of days; the in-process workers read these."""
    for name in list(os.environ):
        if name.startswith(tuple(f"BACKINSTOCK_{p}" for p in PROVIDER_ENV)):
            del os.environ[name]
    os.environ["BACKINSTOCK_QUIET_HOURS"] = ""
    os.environ["BACKINSTOCK_FOLLOWUP_AFTER_SECONDS"] = str(FOLLOWUP_AFTER_SECONDS)


def steps() -> int:
    return len(PRODUCTS) + 6


async def run(settings: Settings, advance: Advance) -> DemoResult:
    if not settings.core.is_sqlite or settings.core.redis_url:
        raise DemoRefused("the demo fills the embedded (SQLite) instance only")
    from backinstock.worker import start_embedded_worker

    runtime = Runtime.create(settings)
    worker = start_embedded_worker(settings.waves.embedded_worker_threads)
    try:
        return await _fill(runtime, advance)
    finally:
        worker.stop()
        await runtime.close()


async def _fill(runtime: Runtime, advance: Advance) -> DemoResult:
    suffix = secrets.token_hex(3)
    async with db.transaction(runtime.sessions) as session:
        writer = await auth.create_key(session, f"demo-writer-{suffix}", list(Scope))
        stats_key = await auth.create_key(session, f"demo-stats-{suffix}", [Scope.STATS])
        admin_key = await auth.create_key(session, f"demo-admin-{suffix}", [Scope.ADMIN])
    transport = httpx.ASGITransport(app=create_app(runtime=runtime))
    headers = {"Authorization": f"Bearer {writer}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://demo", headers=headers
    ) as api:
        await _upload_coupons(api, suffix)
        start = 0
        for sku, name, waiting in PRODUCTS:
            await _subscribe(api, sku, name, start, waiting, suffix)
            start += waiting
            advance(f"{waiting} shoppers wait for {name}")
        sku = PRODUCTS[0][0]
        await _post(
            api,
            "/v1/restocks",
            {"event_id": f"demo-{suffix}", "sku": sku, "available": RESTOCKED, "location": "demo"},
        )
        notified = await _wait_for(runtime, Kind.RESTOCK, sku, RESTOCKED)
        advance(f"restocked {RESTOCKED}: {notified} messages in the dev outbox")
        told = await _notifications(runtime, Kind.RESTOCK, sku)
        clicks = await _click(api, runtime, told[:CLICKERS])
        advance(f"{clicks} shoppers followed their link")
        orders = await _buy(api, runtime, told[:BUYERS], suffix)
        advance(f"{orders} of them bought")
        coupons = await _wait_for(runtime, Kind.FOLLOWUP, sku, RESTOCKED - BUYERS)
        advance(f"{coupons} follow-up coupons for those who did not buy")
        orders += await _redeem(api, runtime, sku, suffix)
        advance(f"{COUPON_BUYERS} coupons redeemed")
    advance("done")
    return DemoResult(stats_key, admin_key, notified, clicks, orders, coupons)


async def _post(api: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(path, json=body)
    if response.status_code >= 400:
        raise DemoRefused(f"{path} answered {response.status_code}: {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


async def _upload_coupons(api: httpx.AsyncClient, suffix: str) -> None:
    codes = [f"DEMO{suffix.upper()}-{i:03d}" for i in range(20)]
    body = {"name": f"demo-{suffix}", "description": "10% off", "codes": codes}
    await _post(api, "/v1/coupons/pools", body)


def _contact(n: int, suffix: str) -> tuple[str, str]:
    if n % 3 == 0:
        return "sms", f"+120255501{n % 100:02d}"
    if n % 3 == 1:
        return "email", f"shopper{n}.{suffix}@example.com"
    return "wechat", f"oDEMO{suffix}{n:015d}"


async def _subscribe(
    api: httpx.AsyncClient, sku: str, name: str, start: int, count: int, suffix: str
) -> None:
    for n in range(start, start + count):
        channel, contact = _contact(n, suffix)
        body = {
            "sku": sku,
            "channel": channel,
            "contact": contact,
            "locale": "en" if n % 2 else "zh-CN",
            "timezone": "Asia/Shanghai",
            "name": f"Shopper {n}",
            "customer_id": f"demo-{suffix}-{n}",
            "priority": "vip" if n % 10 == 0 else "standard",
            "source": "demo",
            "product": {"name": name, "url": f"https://shop.example/p/{sku.lower()}"},
            "fallbacks": [{"channel": "email", "contact": f"fallback{n}.{suffix}@example.com"}],
        }
        await _post(api, "/v1/subscriptions", body)


async def _notifications(runtime: Runtime, kind: str, sku: str) -> list[Notification]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(Notification)
            .where(
                Notification.kind == kind, Notification.sku == sku, Notification.status == "sent"
            )
            .order_by(Notification.sent_at, Notification.id)
        )
        return list(rows)


async def _wait_for(runtime: Runtime, kind: str, sku: str, expected: int) -> int:
    deadline = time.monotonic() + 60
    sent = len(await _notifications(runtime, kind, sku))
    while sent < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        sent = len(await _notifications(runtime, kind, sku))
    return sent


async def _click(api: httpx.AsyncClient, runtime: Runtime, told: list[Notification]) -> int:
    for notification in told:
        token = runtime.keys.tokens.sign(CLICK_TOKEN, notification.id)
        await api.get(f"/r/{token}", follow_redirects=False)
    return len(told)


async def _buy(
    api: httpx.AsyncClient, runtime: Runtime, buyers: list[Notification], suffix: str
) -> int:
    for i, notification in enumerate(buyers):
        token = runtime.keys.tokens.sign(CLICK_TOKEN, notification.id)
        body = {
            "order_id": f"demo-{suffix}-{i}",
            "items": [{"sku": notification.sku, "quantity": 1, "unit_price": "99.00"}],
            "currency": "CNY",
            "notification_token": token,
        }
        await _post(api, "/v1/orders", body)
    return len(buyers)


async def _redeem(api: httpx.AsyncClient, runtime: Runtime, sku: str, suffix: str) -> int:
    async with runtime.sessions() as session:
        codes = list(
            await session.scalars(
                select(Coupon.code)
                .where(Coupon.sku == sku, Coupon.issued_at.is_not(None))
                .order_by(Coupon.issued_at)
                .limit(COUPON_BUYERS)
            )
        )
    for i, code in enumerate(codes):
        body = {
            "order_id": f"demo-{suffix}-coupon-{i}",
            "items": [{"sku": sku, "quantity": 2, "unit_price": "89.10"}],
            "currency": "CNY",
            "coupon_code": code,
        }
        await _post(api, "/v1/orders", body)
    return len(codes)
