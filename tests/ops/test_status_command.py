"""``backinstock status``, run as the operator runs it (a process of its own) against the
database a restock was just dispatched into."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx

from tests.clock import SteppingClock
from tests.conftest import WorkerStarter
from tests.restocks.helpers import post_level, subscribe_many
from tests.workers import settle


def status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backinstock", "status", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
        timeout=120,
    )


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


async def test_status_shows_the_wave_held_work_and_providers(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    start_worker: WorkerStarter,
    clock: SteppingClock,
) -> None:
    key = api_keys["all"]
    await subscribe_many(client, key, 4, timezone="UTC")
    await subscribe_many(client, key, 1, start=50, channel="email", contact="a@mailbox.example")
    this_hour = clock.now().replace(minute=0, second=0, microsecond=0)
    start_worker(quiet_hours=f"{this_hour.hour:02d}:00-{(this_hour.hour + 2) % 24:02d}:00")
    await post_level(client, key, 10)
    await settle()

    shown = await asyncio.to_thread(status)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "Open waves" in out and "SKU-1" in out
    wave = cells(next(line for line in out.splitlines() if "SKU-1" in line))
    # told / to tell, the bar, then held, pending, sending, failed.
    assert wave[4] == "1 / 5" and "━" in wave[5] and wave[6:] == ["4", "0", "0", "0"], wave
    sms = cells(next(line for line in out.splitlines() if "│ sms " in line))
    assert sms[:2] == ["sms", "4"], sms
    assert "oldest due message: none due" in out
    assert "last message sent:" in out and "never" not in out
    assert out.count("dev outbox") == 3, "no provider configured here"
    assert "+86" not in out and "mailbox.example" not in out, "no contact is shown"

    twilio = {
        "BACKINSTOCK_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "BACKINSTOCK_TWILIO_AUTH_TOKEN": "secret-token-never-shown",
        "BACKINSTOCK_TWILIO_FROM": "+15005550006",
        "BACKINSTOCK_TWILIO_RATE_PER_SECOND": "50",
    }
    watched = await asyncio.to_thread(
        status, "--watch", "--interval", "0", "--count", "2", env=twilio
    )
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("backinstock status at") == 2, "two redraws"
    assert "Twilio, from +15005550006" in watched.stdout and "50/s" in watched.stdout
    assert "secret-token-never-shown" not in watched.stdout


async def test_status_with_nothing_going_on(runtime: object) -> None:
    shown = await asyncio.to_thread(status)
    assert shown.returncode == 0, shown.stderr
    assert "(none)" in shown.stdout and "last message sent: never" in shown.stdout
