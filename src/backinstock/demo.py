"""``backinstock demo``: an embedded instance with something to look at.

Everything goes through the real API (in process, over ASGI) and the real workers, so the
demo exercises the same code as production: subscriptions are validated and encrypted, the
restock opens a wave, messages land in the dev outbox, clicks follow tracked links, orders
are attributed and follow-up coupons go out. Contacts are reserved examples: addresses at
example.com (RFC 2606), +1 202-555-01xx numbers (reserved for fiction), made-up openids.

The demo has an instance of its own: its own SQLite file and key file, settings of its own
(providers off, no quiet hours, follow-ups after seconds) and in-process workers that see
only that file. The instance the user runs (``BACKINSTOCK_DATABASE_URL``, Redis, keys) is
never opened: the demo's short follow-up delay and its all-scope writer key must not reach
real shoppers, coupon pools or key lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url

from backinstock import db
from backinstock.auth import service as auth
from backinstock.auth.service import Scope
from backinstock.config import Settings
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Kind, Notification, Status
from backinstock.identity import CLICK_TOKEN
from backinstock.main import create_app
from backinstock.runtime import Runtime

# Credentials the demo empties so that no provider is configured: it must never reach a real
# phone or mailbox (emptied rather than removed, so that a .env file cannot fill them in).
PROVIDER_CREDENTIALS = (
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_FROM",
    "TWILIO_MESSAGING_SERVICE_SID",
    "SMTP_HOST",
    "SMTP_FROM",
    "WECHAT_APP_ID",
    "WECHAT_APP_SECRET",
    "WECHAT_TEMPLATE_ID",
)
DEFAULT_DATABASE = Path("backinstock-demo.db")
FIRST_PORT = 8001  # the user's own instance is likely on 8000
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
FOLLOWUP_AFTER_SECONDS = 2  # the demo's follow-up delay (72 h by default), skipped, not waited
POLL_SECONDS = 0.05  # how often the demo looks whether the workers have sent what it expects
SWEEP_INTERVAL_SECONDS = 0.25  # how often its workers look for due work (1 s by default)


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


@dataclass(frozen=True)
class DemoInstance:
    """Where the demo lives, and how to serve it afterwards."""

    database: Path  # absolute
    port: int

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.database}"

    @property
    def key_file(self) -> Path:
        return self.database.with_name(self.database.stem + ".keys.json")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """The demo's settings, complete enough that neither the user's environment nor a
        .env file changes what it does or where it writes."""
        values = {
            "DATABASE_URL": self.database_url,
            "KEY_FILE": str(self.key_file),
            "PUBLIC_BASE_URL": self.base_url,  # the links in its messages lead to its server
            "REDIS_URL": "",
            "ENCRYPTION_KEYS": "",
            "BLIND_INDEX_KEY": "",
            "TOKEN_KEY": "",
            "ALLOWED_LINK_HOSTS": "",
            "QUIET_HOURS": "",  # the demo runs at any hour
            "FOLLOWUP_AFTER_SECONDS": str(FOLLOWUP_AFTER_SECONDS),
            # The sweeper finds the due follow-ups: within a fraction of their short delay
            # (the default 1 s would be half of it), and never slowed by a .env file.
            "SWEEP_INTERVAL_SECONDS": str(SWEEP_INTERVAL_SECONDS),
            "BATCH_MULTIPLIER": "1",
            "MAX_NOTIFICATIONS": "3",
            "RATE_LIMIT_PER_IP": "",
            "RATE_LIMIT_PER_CONTACT": "",
            **dict.fromkeys(PROVIDER_CREDENTIALS, ""),
        }
        return {f"BACKINSTOCK_{name}": value for name, value in values.items()}

    def serve_command(self, program: str, user: Settings) -> str:
        """The command that serves the demo from the user's shell: the demo's database, key
        file and base URL, plus an empty value for each of the user's own settings that
        would get in the way (Redis, keys, configured providers)."""
        env = {
            "DATABASE_URL": self.database_url,
            "KEY_FILE": str(self.key_file),
            "PUBLIC_BASE_URL": self.base_url,
        }
        in_the_way = {
            "REDIS_URL": user.core.redis_url,
            "ENCRYPTION_KEYS": user.crypto.encryption_keys,
            "BLIND_INDEX_KEY": user.crypto.blind_index_key,
            "TOKEN_KEY": user.crypto.token_key,
            "TWILIO_ACCOUNT_SID": user.twilio.configured,
            "SMTP_HOST": user.smtp.configured,
            "WECHAT_APP_ID": user.wechat.configured,
        }
        env.update({name: "" for name, value in in_the_way.items() if value})
        assignments = " ".join(f"BACKINSTOCK_{k}={shlex.quote(v)}" for k, v in env.items())
        return f"{assignments} {program} serve --port {self.port}"


Advance = Callable[[str], None]


class DemoClock:
    """The system's time, which the demo moves past the follow-up delay once its shoppers
    have bought, instead of waiting it out: its API and workers read this clock, so the
    follow-ups go out at once, and only to the shoppers who had not bought by then.

    It starts as far behind the system's time as it will skip, so it never runs ahead: the
    instance the demo prints is served on the system's clock, and nothing the demo wrote
    may lie in that clock's future. Started level, the follow-ups' coupons were issued 2 s
    ahead, and a funnel asked for within those 2 s (its period ends now) left them out."""

    def __init__(self, skips: float = 0.0) -> None:
        self._ahead = -timedelta(seconds=skips)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._ahead

    def skip(self, seconds: float) -> None:
        self._ahead += timedelta(seconds=seconds)


def create_instance(database: Path, port: int | None, user: Settings) -> DemoInstance:
    """The demo's own instance, emptied of any earlier demo. Refuses a file that is the
    user's database or that holds anything but demo data."""
    path = database.expanduser().resolve()
    if port is not None and not _port_is_free(port):
        raise DemoRefused(f"port {port} is in use; choose another --port, or leave it out")
    instance = DemoInstance(
        path, port or _free_port(avoid=urlsplit(user.core.public_base_url).port)
    )
    if _sqlite_path(user.core.database_url) == path:
        raise DemoRefused(
            f"{path} is the database BACKINSTOCK_DATABASE_URL names; the demo needs a file "
            "of its own (--database)"
        )
    if instance.key_file == Path(user.crypto.key_file).expanduser().resolve():
        raise DemoRefused(f"{instance.key_file} is your key file; choose another --database")
    if path.exists() and not _holds_only_demo_data(path):
        raise DemoRefused(
            f"{path} holds API keys the demo did not create, so it is not a demo database "
            "(each demo starts its own afresh); choose another --database"
        )
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    instance.key_file.unlink(missing_ok=True)
    return instance


def prepare_environment(instance: DemoInstance) -> None:
    """The demo's settings replace every BACKINSTOCK_ variable of this process, so the
    in-process workers (which read the environment) see the demo's database only."""
    for name in list(os.environ):
        if name.startswith("BACKINSTOCK_"):
            del os.environ[name]
    os.environ.update(instance.environment())


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    name = make_url(url).database
    if not name or name == ":memory:":
        return None
    return Path(name).expanduser().resolve()


def _holds_only_demo_data(path: Path) -> bool:
    """Every write goes through an API key, so a file whose keys are all the demo's holds
    nothing but demo data (and one without a keys table holds nothing at all)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            if "api_keys" not in tables:
                return True
            names = [row[0] for row in conn.execute("SELECT name FROM api_keys")]
    except sqlite3.DatabaseError:
        return False
    return all(name.startswith("demo-") for name in names)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port(avoid: int | None) -> int:
    for port in range(FIRST_PORT, FIRST_PORT + 100):
        if port != avoid and _port_is_free(port):
            return port
    raise DemoRefused(f"no free port from {FIRST_PORT} on; choose one with --port")


def steps() -> int:
    return len(PRODUCTS) + 6


async def run(settings: Settings, advance: Advance) -> DemoResult:
    if not settings.core.is_sqlite or settings.core.redis_url:
        raise DemoRefused("the demo fills its own embedded (SQLite) instance only")
    from backinstock.worker import start_embedded_worker

    clock = DemoClock(skips=FOLLOWUP_AFTER_SECONDS)
    runtime = Runtime.create(settings, clock)
    worker = start_embedded_worker(settings.waves.embedded_worker_threads, clock=clock)
    try:
        return await _fill(runtime, clock, advance)
    finally:
        worker.stop()
        await runtime.close()


async def _fill(runtime: Runtime, clock: DemoClock, advance: Advance) -> DemoResult:
    suffix = secrets.token_hex(3)
    writer_name = f"demo-writer-{suffix}"
    async with db.transaction(runtime.sessions) as session:
        writer = await auth.create_key(session, writer_name, list(Scope))
        stats_key = await auth.create_key(session, f"demo-stats-{suffix}", [Scope.STATS])
        admin_key = await auth.create_key(session, f"demo-admin-{suffix}", [Scope.ADMIN])
    try:
        counts = await _act(runtime, clock, writer, suffix, advance)
    finally:
        # The all-scope key was for writing the demo's data; nobody is to keep using it.
        async with db.transaction(runtime.sessions) as session:
            await auth.revoke_key(session, writer_name)
    advance("done")
    return DemoResult(stats_key, admin_key, *counts)


async def _act(
    runtime: Runtime, clock: DemoClock, writer: str, suffix: str, advance: Advance
) -> tuple[int, int, int, int]:
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
        clock.skip(FOLLOWUP_AFTER_SECONDS)
        coupons = await _wait_for(runtime, Kind.FOLLOWUP, sku, RESTOCKED - BUYERS)
        advance(f"{coupons} follow-up coupons for those who did not buy")
        orders += await _redeem(api, runtime, sku, suffix)
        advance(f"{COUPON_BUYERS} coupons redeemed")
    return notified, clicks, orders, coupons


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
            "attributes": _attributes(n),
        }
        await _post(api, "/v1/subscriptions", body)


def _attributes(n: int) -> dict[str, str]:
    """Two segments and shoppers without one, so the dashboard has segments to compare;
    "sensitive-skin" has its own copy (channels/<channel>/segments/sensitive-skin/)."""
    segment = ("sensitive-skin", "oily-skin", None)[n % 3]
    return {"segment": segment} if segment else {}


async def _notifications(runtime: Runtime, kind: str, sku: str) -> list[Notification]:
    async with runtime.sessions() as session:
        rows = await session.scalars(
            select(Notification)
            .where(
                Notification.kind == kind,
                Notification.sku == sku,
                Notification.status == Status.SENT,
            )
            .order_by(Notification.sent_at, Notification.id)
        )
        return list(rows)


async def _wait_for(runtime: Runtime, kind: str, sku: str, expected: int) -> int:
    deadline = time.monotonic() + 60
    sent = len(await _notifications(runtime, kind, sku))
    while sent < expected and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
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
