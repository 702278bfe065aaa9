"""Crash safety on the path production takes: real worker processes sending through the
real provider clients (Twilio SDK, aiosmtplib, httpx for WeChat) to the suite's fake
servers, killed with SIGKILL at random moments, stopped with SIGTERM, the broker flushed.

The fakes answer each accepted message a little late, so a kill catches messages that the
provider has and the worker never heard of: the in-doubt case each channel settles its own
way (SMS: looked up in Twilio's Messages list; email: resent with the same Message-ID;
WeChat: resent, by default).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backinstock.config import DeliverySettings
from backinstock.contacts import Channel
from backinstock.runtime import Runtime
from tests.conftest import BACKEND
from tests.crashkit import (
    SMTP_CONNECTIONS,
    WORKER_ARGS,
    Provider,
    Tally,
    random_faults,
    run_wave,
    start_provider,
)
from tests.restocks.helpers import post_level
from tests.restocks.seed import seed_waiting
from tests.server import BackinstockProcess, ServerProcess

postgres_only = pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL + Redis workers")
sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="embedded: SQLite, in-process")
# Sends at once per worker process (the senders' defaults): what a kill can leave in flight.
CONCURRENCY = {Channel.SMS: 20, Channel.EMAIL: SMTP_CONNECTIONS, Channel.WECHAT: 20}
# A claim's journal queues up to this many finished calls before they are committed.
FLUSH_GROUP = DeliverySettings().record_results
# The shape of every contact tests/restocks/seed.py gives each channel.
CONTACTS = {
    Channel.SMS: r"\+86138\d{8}",
    Channel.EMAIL: r"shopper\d+@mailbox\.example",
    Channel.WECHAT: r"oShopper\d{20}",
}
LOOKAHEAD = DeliverySettings().start_lookahead
WORKER_THREADS = int(WORKER_ARGS[WORKER_ARGS.index("--threads") + 1])


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    channel, accept_delay = request.param
    fake = start_provider(channel, rate=500, accept_delay=accept_delay)
    yield fake
    fake.stop()


def _in_flight_bound(channel: Channel, kills: int) -> int:
    # Calls running (the process's sender is shared by its claims), and per claim at work
    # (one per worker thread) messages marked ahead of their start and results not yet
    # committed.
    return kills * (CONCURRENCY[channel] + WORKER_THREADS * (LOOKAHEAD + FLUSH_GROUP))


def _assert_everyone_told_once_per_policy(tally: Tally, channel: Channel, kills: int) -> None:
    assert tally.lost == 0, tally
    in_doubt = sum(tally.in_doubt.values())
    assert in_doubt <= _in_flight_bound(channel, kills), tally
    assert tally.in_doubt["unresolved"] == 0 and tally.in_doubt["dropped"] == 0, tally
    if channel is Channel.SMS:
        assert tally.duplicates == 0, tally  # reconciled against Twilio's list
        assert tally.in_doubt["found"] >= 1, "no kill caught a message Twilio had accepted"
    else:
        # A second copy only for a message that was in flight at a kill, and resent.
        assert tally.duplicates <= tally.in_doubt["resent"], tally
        assert tally.in_doubt["resent"] >= 1, "no kill caught a call in flight"
    if channel is Channel.EMAIL:
        assert tally.same_message_id, "a resent email must carry the first one's Message-ID"


@postgres_only
@pytest.mark.parametrize(
    ("provider", "shoppers"),
    [((Channel.SMS, 0.05), 5000), ((Channel.EMAIL, 0.01), 5000), ((Channel.WECHAT, 0.05), 2000)],
    indirect=["provider"],
    ids=["sms", "email", "wechat"],
)
async def test_two_kills_and_a_broker_flush_lose_nobody(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    provider: Provider,
    shoppers: int,
    tmp_path: Path,
) -> None:
    await seed_waiting(runtime, shoppers, channel=provider.channel)
    faults = random_faults(seed=shoppers, shoppers=shoppers, kinds=["kill", "flush", "kill"])

    async def restock(_: BackinstockProcess) -> None:
        response = await post_level(client, api_keys["inventory"], shoppers)
        assert response.json()["first_wave"] == shoppers

    tally = await run_wave(runtime, provider, shoppers, faults, restock, tmp_path)

    _assert_everyone_told_once_per_policy(tally, provider.channel, kills=2)
    if provider.channel is Channel.SMS:
        assert provider.fake.list_requests >= tally.in_doubt["found"]
    # Dramatiq logs at INFO in its worker processes: no client library may log a contact.
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert not re.search(CONTACTS[provider.channel], log), "a contact in the worker's log"


@postgres_only
@pytest.mark.parametrize(
    "provider",
    [(Channel.SMS, 0.05), (Channel.EMAIL, 0.01), (Channel.WECHAT, 0.05)],
    indirect=True,
    ids=["sms", "email", "wechat"],
)
async def test_sigterm_mid_wave_drains_and_sends_nothing_twice(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    provider: Provider,
    tmp_path: Path,
) -> None:
    shoppers = 800
    await seed_waiting(runtime, shoppers, channel=provider.channel)

    async def restock(_: BackinstockProcess) -> None:
        await post_level(client, api_keys["inventory"], shoppers)

    faults = random_faults(seed=7, shoppers=shoppers, kinds=["term"])
    tally = await run_wave(runtime, provider, shoppers, faults, restock, tmp_path)

    # In-flight calls finished and were recorded, unstarted claims went back to the queue:
    # the stopped worker left no claimed row, and nothing was in doubt.
    assert tally.open_after_term == [0], tally
    assert tally.term_seconds[0] < float(provider.env["BACKINSTOCK_SHUTDOWN_GRACE_SECONDS"])
    assert (tally.lost, tally.duplicates, sum(tally.in_doubt.values())) == (0, 0, 0), tally


@sqlite_only
@pytest.mark.parametrize(
    ("provider", "kinds"),
    [
        ((Channel.SMS, 0.05), ["kill", "kill"]),
        ((Channel.EMAIL, 0.01), ["kill", "term"]),
        ((Channel.WECHAT, 0.05), ["term", "kill"]),
    ],
    indirect=["provider"],
    ids=["sms-kills", "email-kill-term", "wechat-term-kill"],
)
async def test_embedded_server_killed_and_stopped_mid_wave(
    api_keys: dict[str, str],
    runtime: Runtime,
    provider: Provider,
    kinds: list[str],
    tmp_path: Path,
) -> None:
    shoppers = 1000  # two faults mid-wave; the 5,000-shopper scale is the PostgreSQL test's
    await seed_waiting(runtime, shoppers, channel=provider.channel)

    async def restock(server: Any) -> None:
        assert isinstance(server, ServerProcess)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            response = await post_level(http, api_keys["inventory"], shoppers)
            assert response.status_code == 202

    faults = random_faults(seed=11, shoppers=shoppers, kinds=kinds)
    tally = await run_wave(runtime, provider, shoppers, faults, restock, tmp_path, embedded=True)

    _assert_everyone_told_once_per_policy(tally, provider.channel, kills=kinds.count("kill"))
    assert tally.open_after_term == [0] * kinds.count("term"), tally
