"""``backinstock demo`` fills a fresh embedded instance, and the service then shows it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKEND
from tests.helpers import bearer
from tests.server import ServerProcess

pytestmark = pytest.mark.skipif(
    BACKEND == "postgres", reason="the demo is for the embedded mode: the SQLite run covers it"
)


def _embedded_env(tmp_path: Path) -> dict[str, str]:
    return {
        "BACKINSTOCK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        "BACKINSTOCK_REDIS_URL": "",
        "BACKINSTOCK_KEY_FILE": str(tmp_path / "keys.json"),
        # Set here to show the demo turns providers off: nothing may leave the machine.
        "BACKINSTOCK_SMTP_HOST": "127.0.0.1",
        "BACKINSTOCK_SMTP_PORT": "9",
        "BACKINSTOCK_SMTP_FROM": "shop@example.com",
    }


def _demo(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backinstock", "demo"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=180,
    )


def test_the_demo_fills_the_embedded_instance_and_says_where_to_look(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    done = _demo(env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    stats_key = lines[-1]
    found = re.search(r"outbox:.*Bearer (bis_\S+)'", done.stdout)
    assert found, done.stdout
    admin_key = found.group(1)
    assert "/dashboard" in done.stdout and stats_key.startswith("bis_")

    server_env = {k: v for k, v in env.items() if not k.startswith("BACKINSTOCK_SMTP")}
    with ServerProcess(server_env, tmp_path / "server.log") as server:
        outbox = httpx.get(
            f"{server.base_url}/v1/dev/outbox?limit=1000", headers=bearer(admin_key)
        ).json()["items"]
        funnel = httpx.get(f"{server.base_url}/v1/stats/funnel", headers=bearer(stats_key))
    assert len(outbox) == 30 + 24, "30 restock messages and 24 follow-ups, all in the outbox"
    assert all(m["to"].endswith("@example.com") for m in outbox if m["channel"] == "email")
    figures = funnel.json()
    assert (figures["subscribed"], figures["notified"], figures["clicked"]) == (75, 30, 14)
    assert (figures["converted"], figures["coupons_issued"], figures["coupons_redeemed"]) == (
        8,
        24,
        2,
    )


def test_the_demo_refuses_a_production_database(tmp_path: Path) -> None:
    env = {
        **_embedded_env(tmp_path),
        "BACKINSTOCK_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1/none",
    }
    refused = _demo(env, tmp_path)
    assert refused.returncode == 2
    assert "embedded" in refused.stderr
