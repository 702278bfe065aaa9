"""After 1,000 subscriptions through a real server, no contact is readable in a database
dump or in the server's logs; after a restock, no name or link token is readable in the
dev outbox's rows."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from backinstock.config import Settings
from backinstock.runtime import Runtime
from tests.conftest import BACKEND, PG_DATABASE
from tests.helpers import bearer, subscription_body
from tests.restocks.helpers import post_level, wait_for_outbox
from tests.server import BackinstockProcess, ServerProcess

pytestmark = pytest.mark.asyncio

N = 300  # every channel, SKU and consent IP pattern several times over


def _contacts(i: int) -> tuple[str, str, str]:
    phone_digits = f"139{i:08d}"
    return f"+86{phone_digits}", f"shopper{i:05d}@mailbox.example", phone_digits


def _body(i: int) -> dict[str, object]:
    phone, email, _ = _contacts(i)
    channel = ("sms", "email", "wechat")[i % 3]
    contact = {"sms": phone, "email": email, "wechat": f"oOpenId{i:020d}"}[channel]
    return subscription_body(
        sku=f"SKU-{i % 17}",
        channel=channel,
        contact=contact,
        name=f"Shopper Name {i:05d}",
        fallbacks=[{"channel": "email", "contact": email}] if channel == "sms" else [],
        consent={"text_version": "2026-01", "ip": f"203.0.113.{i % 250}"},
    )


def _secrets(i: int) -> list[str]:
    phone, email, digits = _contacts(i)
    return [phone, digits, email, f"oOpenId{i:020d}", f"Shopper Name {i:05d}"]


# Every shape of a secret above, looked for at every position (matches may overlap): a
# secret is in a text exactly when it is among these matches. One pass over the text, where
# looking for each of the 1,500 secrets in turn read a dump of megabytes 1,500 times.
_SHAPES = re.compile(
    r"(?=(139\d{8}|shopper\d{5}@mailbox\.example|oOpenId\d{20}|Shopper Name \d{5}))"
)


def _found(text: str, secrets: set[str]) -> list[str]:
    """The secrets ``text`` holds (a phone number also shows as its digits alone)."""
    return sorted({match.group(1) for match in _SHAPES.finditer(text)} & secrets)


def _database_dump(settings: Settings) -> str:
    if BACKEND == "postgres":
        pg_dump = shutil.which("pg_dump")
        assert pg_dump, "pg_dump is needed for this test"
        return subprocess.run(
            [pg_dump, "-h", "127.0.0.1", "-U", "postgres", "--inserts", PG_DATABASE],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    path = settings.core.database_url.split("///", 1)[1]
    # Read the files from another process: closing any descriptor of a file drops every
    # POSIX lock this process holds on it, including those of the suite's own connection.
    result = subprocess.run(
        [sys.executable, "-c", _SQLITE_DUMP, path], check=True, capture_output=True
    )
    return result.stdout.decode("latin-1")


# The SQL dump plus the raw bytes of the database, WAL and shared-memory files.
_SQLITE_DUMP = """
import glob, sqlite3, sys
path = sys.argv[1]
connection = sqlite3.connect(path)
sys.stdout.buffer.write("\\n".join(connection.iterdump()).encode())
connection.close()
for name in glob.glob(glob.escape(path) + "*"):
    sys.stdout.buffer.write(open(name, "rb").read())
"""


async def test_no_contact_in_database_dump_or_logs(
    settings: Settings, api_keys: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    with ServerProcess(
        {"BACKINSTOCK_LOG_LEVEL": "DEBUG", "BACKINSTOCK_RATE_LIMIT_PER_IP": ""}, log_path
    ) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            headers = bearer(api_keys["subscribe"])
            semaphore = asyncio.Semaphore(16)

            async def post(i: int) -> int:
                async with semaphore:
                    response = await client.post(
                        "/v1/subscriptions", json=_body(i), headers=headers
                    )
                    return response.status_code

            codes = await asyncio.gather(*(post(i) for i in range(N)))
            assert codes.count(201) == N
            # Failing requests too: a rejected contact must not be echoed or logged.
            bad = subscription_body(channel="email", contact="not-valid-" + _contacts(0)[2])
            rejected = await client.post("/v1/subscriptions", json=bad, headers=headers)
            assert rejected.status_code == 422
            assert _contacts(0)[2] not in rejected.text

    dump = _database_dump(settings)
    logs = log_path.read_text()
    assert dump.count("subscriptions") > 0 and len(logs) > 0
    assert logs.count('"route": "/v1/subscriptions"') >= N
    secrets = {secret for i in range(N) for secret in _secrets(i)}
    assert not _found(dump, secrets), "plaintext contacts in the database dump"
    assert not _found(logs, secrets), "plaintext contacts in the server log"


MESSAGED = 30
_TOKEN = re.compile(r"/[rus]/([A-Za-z0-9_-]{20,})")


def _shopper(i: int) -> dict[str, object]:
    channel = ("sms", "email", "wechat")[i % 3]
    phone, email, _ = _contacts(50_000 + i)
    contact = {"sms": phone, "email": email, "wechat": f"oOpenId{50_000 + i:020d}"}[channel]
    return subscription_body(
        sku="SKU-OUTBOX", channel=channel, contact=contact, name=f"Outbox Shopper {i:05d}"
    )


async def test_dev_outbox_keeps_names_and_link_tokens_sealed(
    settings: Settings, runtime: Runtime, api_keys: dict[str, str], tmp_path: Path
) -> None:
    """Rendered messages carry the shopper's name and live click, shopper's page and
    unsubscribe tokens: the dev outbox stores them sealed, and only the admin view opens
    them."""
    env = {"BACKINSTOCK_LOG_LEVEL": "DEBUG", "BACKINSTOCK_RATE_LIMIT_PER_IP": ""}
    worker = BackinstockProcess(
        ["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log"
    )
    with ServerProcess(env, tmp_path / "server.log") as server:
        if BACKEND == "postgres":
            worker.start()
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
                for i in range(MESSAGED):
                    response = await client.post(
                        "/v1/subscriptions", json=_shopper(i), headers=bearer(api_keys["subscribe"])
                    )
                    assert response.status_code == 201, response.text
                restock = await post_level(
                    client, api_keys["inventory"], MESSAGED, sku="SKU-OUTBOX"
                )
                assert restock.status_code == 202
                assert await wait_for_outbox(runtime, MESSAGED, within=60) == MESSAGED
                page = await client.get(
                    "/v1/dev/outbox?limit=1000", headers=bearer(api_keys["admin"])
                )
        finally:
            worker.stop()
    items = page.json()["items"]
    bodies = "\n".join(f"{item['subject'] or ''}\n{item['body']}" for item in items)
    names = [f"Outbox Shopper {i:05d}" for i in range(MESSAGED)]
    emailed = [name for i, name in enumerate(names) if i % 3 == 1]
    tokens = set(_TOKEN.findall(bodies))
    # Email greets by name; SMS and email carry a click and a shopper's page link each,
    # email an unsubscribe link too.
    assert all(name in bodies for name in emailed), "the admin view opens every message"
    texted = len([i for i in range(MESSAGED) if i % 3 == 0])
    assert len(tokens) == 2 * texted + 3 * len(emailed), "every token is in the view"

    dump = _database_dump(settings)
    assert "dev_outbox" in dump
    for secret in [*names, *tokens]:
        assert secret not in dump, f"{secret!r} is stored in plaintext"
