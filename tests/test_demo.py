"""``backinstock demo`` fills an instance of its own, leaves the user's alone, and prints a
command that serves it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from backinstock.auth.models import ApiKey
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Notification
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.clock import SteppingClock
from tests.commands import invoke
from tests.conftest import BACKEND, ClientFactory, WorkerStarter
from tests.conversions.helpers import sent_count
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import post_level
from tests.server import BackinstockProcess, free_port
from tests.waiting import eventually_sync
from tests.workers import settle, tick

# The user's shell configures an email provider: the demo must switch it off for itself.
USER_SMTP = {
    "BACKINSTOCK_SMTP_HOST": "127.0.0.1",
    "BACKINSTOCK_SMTP_PORT": "9",
    "BACKINSTOCK_SMTP_FROM": "shop@example.com",
}
KEYS_CREATE_ERP = ("keys", "create", "--name", "erp", "--scope", "inventory")
embedded_only = pytest.mark.skipif(
    BACKEND == "postgres", reason="the demo's instance is the same SQLite file on both runs"
)


def _demo(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``backinstock demo`` in the user's environment: the suite's settings are the instance
    the user runs (SQLite, or PostgreSQL + Redis)."""
    return subprocess.run(
        [sys.executable, "-m", "backinstock", "demo", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=180,
    )


def _serve_command(stdout: str) -> tuple[dict[str, str], list[str]]:
    """The printed serve command, as its variable assignments and its argv."""
    lines = stdout.splitlines()
    words = shlex.split(lines[lines.index("serve the demo:") + 1])
    env = dict(w.split("=", 1) for w in words if re.match(r"^BACKINSTOCK_\w+=", w))
    return env, [w for w in words if not re.match(r"^BACKINSTOCK_\w+=", w)]


def _url(stdout: str, label: str) -> str:
    found = re.search(rf"^{label}:.*?(http://\S+)", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def _demo_rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return list(conn.execute(sql))


@embedded_only
def test_the_demo_fills_its_own_instance_and_its_command_serves_it(tmp_path: Path) -> None:
    first = _demo(tmp_path, env=USER_SMTP)
    assert first.returncode == 0, first.stderr[-3000:]
    port = free_port()
    done = _demo(tmp_path, "--port", str(port), env=USER_SMTP)  # a second run starts afresh
    finished = datetime.now(UTC)
    assert done.returncode == 0, done.stderr[-3000:]
    stats_key = done.stdout.strip().splitlines()[-1]
    found = re.search(r"outbox:.*Bearer (bis_\S+)'", done.stdout)
    assert found, done.stdout
    admin_key = found.group(1)
    assert stats_key.startswith("bis_")

    env, argv = _serve_command(done.stdout)
    database = tmp_path / "backinstock-demo.db"
    assert env["BACKINSTOCK_DATABASE_URL"] == f"sqlite+aiosqlite:///{database}"
    assert env["BACKINSTOCK_KEY_FILE"] == str(tmp_path / "backinstock-demo.keys.json")
    assert env["BACKINSTOCK_PUBLIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert env["BACKINSTOCK_SMTP_HOST"] == "", "the user's provider stays off for the demo"
    # Nothing the demo wrote lies in the future of the clock its command serves on: a
    # funnel's period ends now, and would leave out coupons issued ahead of it.
    for sql in ("SELECT max(issued_at) FROM coupons", "SELECT max(sent_at) FROM notifications"):
        latest = datetime.fromisoformat(_demo_rows(database, sql)[0][0]).replace(tzinfo=UTC)
        assert latest <= finished, sql
    assert env["BACKINSTOCK_ENCRYPTION_KEYS"] == "", "the user's keys are not the demo's"
    assert argv[:3] == [sys.executable, "-m", "backinstock"]
    assert argv[3:] == ["serve", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    assert _url(done.stdout, "dashboard") == f"{base}/dashboard"

    # The printed command, run from the user's shell (their settings still exported).
    server = BackinstockProcess(argv[3:], {**USER_SMTP, **env}, tmp_path / "server.log")
    server.start()
    try:
        _wait_healthy(server, base)
        outbox = httpx.get(
            _url(done.stdout, "dev outbox") + "?limit=1000", headers=bearer(admin_key)
        ).json()["items"]
        funnel = httpx.get(_url(done.stdout, "funnel"), headers=bearer(stats_key)).json()
        segments = httpx.get(f"{base}/v1/stats/segments", headers=bearer(stats_key)).json()
        dashboard = httpx.get(f"{base}/dashboard", headers=bearer(stats_key))
    finally:
        server.stop()
    assert dashboard.status_code == 200
    assert len(outbox) == 30 + 24, "30 restock messages and 24 follow-ups, all in the outbox"
    assert all(m["to"].endswith("@example.com") for m in outbox if m["channel"] == "email")
    linked = [m for m in outbox if m["channel"] in ("sms", "email")]
    assert linked and all(f"{base}/r/" in m["body"] for m in linked), "links lead to the demo"
    assert (funnel["subscribed"], funnel["notified"], funnel["clicked"]) == (75, 30, 14)
    by_segment = {row["segment"]: row["subscribed"] for row in segments["items"]}
    assert by_segment == {None: 25, "oily-skin": 25, "sensitive-skin": 25}
    assert (funnel["converted"], funnel["coupons_issued"], funnel["coupons_redeemed"]) == (
        8,
        24,
        2,
    )


def _wait_healthy(server: BackinstockProcess, base: str) -> None:
    def healthy() -> bool:
        assert server.running, server.log_path.read_text()[-2000:]
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        return False

    eventually_sync(healthy, 30, "the demo's server answers /healthz")


async def _counts(runtime: Runtime) -> dict[str, Any]:
    def count(model: Any, *where: Any) -> Any:
        return select(func.count()).select_from(model).where(*where)

    async with runtime.sessions() as session:
        keys = await session.execute(
            select(ApiKey.name, ApiKey.key_hash, ApiKey.revoked_at).order_by(ApiKey.name)
        )
        return {
            "subscriptions": await session.scalar(count(Subscription)),
            "notifications": await session.scalar(count(Notification)),
            "coupons issued": await session.scalar(count(Coupon, Coupon.issued_at.is_not(None))),
            "pool codes free": await session.scalar(count(Coupon, Coupon.issued_at.is_(None))),
            "api keys": list(keys),
        }


async def test_the_demo_leaves_the_users_instance_alone(
    runtime: Runtime,
    make_client: ClientFactory,
    api_keys: dict[str, str],
    start_worker: WorkerStarter,
    clock: SteppingClock,
    tmp_path: Path,
) -> None:
    """The user's instance (the suite's database, with Redis on PostgreSQL) holds a shopper
    told of a restock, a pool of two codes and keys; its workers run with the default 72 h
    follow-up delay. The demo, run from the same shell, changes none of it."""
    client = make_client()
    key = api_keys["all"]
    response = await client.post("/v1/subscriptions", json=subscription_body(), headers=bearer(key))
    assert response.status_code == 201
    pool = {"name": "launch", "description": "10% off", "codes": ["LAUNCH-1", "LAUNCH-2"]}
    assert (await client.post("/v1/coupons/pools", json=pool, headers=bearer(key))).is_success
    start_worker()
    assert (await post_level(client, key, 5, sku="TSHIRT-RED-M")).status_code == 202
    await settle()
    assert await sent_count(runtime) == 1
    before = await _counts(runtime)

    done = await asyncio.to_thread(_demo, tmp_path, env=USER_SMTP)
    assert done.returncode == 0, done.stderr[-3000:]
    clock.advance(60)  # well past the demo's 2 s follow-up delay since the restock
    await tick()

    assert await _counts(runtime) == before
    assert before["pool codes free"] == 2 and before["coupons issued"] == 0

    database = tmp_path / "backinstock-demo.db"
    assert _demo_rows(database, "SELECT count(*) FROM subscriptions") == [(75,)]
    assert _demo_rows(database, "SELECT count(*) FROM coupons WHERE issued_at IS NOT NULL") == [
        (24,)
    ]
    keys = dict(_demo_rows(database, "SELECT name, revoked_at IS NOT NULL FROM api_keys"))
    assert sorted(name.rsplit("-", 1)[0] for name in keys) == [
        "demo-admin",
        "demo-stats",
        "demo-writer",
    ]
    assert {name.rsplit("-", 1)[0]: revoked for name, revoked in keys.items()} == {
        "demo-admin": 0,
        "demo-stats": 0,
        "demo-writer": 1,
    }, "the all-scope writer key is revoked once the demo is written"

    env, argv = _serve_command(done.stdout)
    port = argv[argv.index("--port") + 1]
    assert env["BACKINSTOCK_DATABASE_URL"] == f"sqlite+aiosqlite:///{database}"
    assert env["BACKINSTOCK_PUBLIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert _url(done.stdout, "dashboard") == f"http://127.0.0.1:{port}/dashboard"
    if BACKEND == "postgres":
        assert env["BACKINSTOCK_REDIS_URL"] == "", "the demo's server must not use the user's Redis"


def test_the_demo_refuses_a_database_that_is_not_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refusals come before the demo opens anything: the command runs in this process, from
    # the directory the user's shell would be in.
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "shop.db"
    created = invoke(
        *KEYS_CREATE_ERP, env={"BACKINSTOCK_DATABASE_URL": f"sqlite+aiosqlite:///{other}"}
    )
    assert created.exit_code == 0, created.stderr
    content = other.read_bytes()

    refused = invoke("demo", "--database", str(other))
    assert refused.exit_code == 2
    assert "not a demo database" in " ".join(refused.stderr.split())
    assert other.read_bytes() == content

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = invoke("demo", "--port", str(busy.getsockname()[1]))
    assert taken.exit_code == 2 and "in use" in taken.stderr

    if BACKEND == "sqlite":  # the suite's own database is a file: the user's instance
        url = os.environ["BACKINSTOCK_DATABASE_URL"]
        own = invoke("demo", "--database", url.removeprefix("sqlite+aiosqlite:///"))
        assert own.exit_code == 2
        assert "BACKINSTOCK_DATABASE_URL" in own.stderr
