"""The ``backinstock`` command's key management and refusals.

Most commands run in this process through typer's runner (in a thread: a command runs its
own event loop), against the suite's database with the suite's environment: a subprocess
would add only an interpreter start. The commands the README runs (``keys create``,
``serve``) run as real processes in tests/test_readme.py, ``keys list`` and ``keys revoke``
in the first test here, and a script's ``KEY=$(… keys create …)`` in a real shell below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select
from typer.testing import Result

from backinstock.config import Settings
from backinstock.crypto import load_keys, new_key_spec
from backinstock.main import create_app
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription, SubscriptionFallback
from tests.commands import invoke
from tests.conftest import ClientFactory
from tests.helpers import bearer, subscription_body


async def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """``backinstock ARGS`` in this process, in a thread: a command runs its own event loop."""
    return await asyncio.to_thread(invoke, *args, env=env)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``backinstock ARGS`` as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "backinstock", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=os.environ, timeout=120
    )


async def test_keys_create_list_revoke(runtime: Runtime, client: httpx.AsyncClient) -> None:
    created = await run("keys", "create", "--name", "storefront", "--scope", "subscribe")
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("bis_") and len(key) > 40
    ok = await client.post("/v1/subscriptions", json=subscription_body(), headers=bearer(key))
    assert ok.status_code == 201

    listed = cli("keys", "list")
    assert "storefront" in listed.stdout and key not in listed.stdout

    duplicate = await run("keys", "create", "--name", "storefront", "--scope", "stats")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.stderr
    bad_scope = await run("keys", "create", "--name", "x", "--scope", "root")
    assert bad_scope.exit_code != 0

    revoked = cli("keys", "revoke", "storefront")
    assert revoked.returncode == 0, revoked.stderr
    assert await _status_in_fresh_process(client, key) == 401


async def test_an_existing_name_fails_on_stderr_and_keeps_its_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    first = await run("keys", "create", "--name", "storefront", "--scope", "subscribe")
    key = first.stdout.strip()
    assert first.exit_code == 0 and key.startswith("bis_"), "stdout carries the key alone"

    again = await run("keys", "create", "--name", "storefront", "--scope", "subscribe")
    assert again.exit_code == 1 and again.stdout == ""
    message = " ".join(again.stderr.split())
    assert "'storefront' already exists" in message and "--replace" in message

    # The README's line, as a script runs it: the failure stops the script, KEY is never used.
    script = (
        f'set -e; KEY=$("{sys.executable}" -m backinstock keys create --name storefront '
        '--scope subscribe); echo "using [$KEY]"'
    )
    shell = sh(script)
    assert shell.returncode == 1 and "using" not in shell.stdout
    assert "already exists" in shell.stderr
    assert await _status_in_fresh_process(client, key) == 201, "the first key still works"


async def test_replace_gives_the_name_a_new_key_and_ends_the_old_one(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    old = (await run("keys", "create", "--name", "storefront", "--scope", "subscribe")).stdout
    old = old.strip()
    replaced = await run(
        "keys", "create", "--name", "storefront", "--scope", "subscribe", "--replace"
    )
    assert replaced.exit_code == 0, replaced.stderr
    new = replaced.stdout.strip()
    assert new.startswith("bis_") and new != old
    assert "replaced key 'storefront'" in " ".join(replaced.stderr.split())
    assert await _status_in_fresh_process(client, old) == 401
    assert await _status_in_fresh_process(client, new) == 201
    assert (await run("keys", "list")).stdout.count("storefront") == 1

    # A revoked name comes back with --replace; a new name is simply created with it.
    assert (await run("keys", "revoke", "storefront")).exit_code == 0
    revived = await run(
        "keys", "create", "--name", "storefront", "--scope", "subscribe", "--replace"
    )
    # 200: the same shopper again, already waiting
    assert await _status_in_fresh_process(client, revived.stdout.strip()) == 200
    fresh = await run("keys", "create", "--name", "erp", "--scope", "inventory", "--replace")
    assert fresh.exit_code == 0 and "created key 'erp'" in fresh.stderr


async def test_publishable_keys_are_created_for_origins_listed_and_revoked(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    created = await run(
        "keys", "create", "--name", "shop-page", "--publishable",
        "--origin", "https://Shop.example/", "--origin", "http://localhost:5173",
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pk_") and len(key) > 40
    assert "https://shop.example" in created.stderr

    listed = (await run("keys", "list")).stdout
    assert "shop-page" in listed and "publishable" in listed and key not in listed
    assert "https://shop.example" in listed and "http://localhost:5173" in listed

    for refused in (
        ["--origin", "http://shop.example"],  # http from a public host
        ["--origin", "https://shop.example/p/1"],  # a path
        [],  # no origin
        ["--origin", "https://shop.example", "--scope", "subscribe"],  # scopes
    ):
        result = await run("keys", "create", "--name", "other", "--publishable", *refused)
        assert result.exit_code == 2 and result.stdout == "", refused
    no_scope = await run("keys", "create", "--name", "other")
    origin_alone = await run(
        "keys", "create", "--name", "other", "--origin", "https://shop.example"
    )
    assert no_scope.exit_code == 2 and origin_alone.exit_code == 2
    assert "other" not in (await run("keys", "list")).stdout

    assert (await run("keys", "revoke", "shop-page")).exit_code == 0
    assert await _status_in_fresh_process(client, key) == 401


def test_widget_prints_this_instances_pinned_snippet() -> None:
    from backinstock.storefront import widget

    result = cli(
        "widget", "--key", "pk_test", "--sku", 'A"<B', "--locale", "en",
        env={"BACKINSTOCK_PUBLIC_BASE_URL": "https://notify.shop.example/"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    latest = widget.latest()
    assert result.stdout.splitlines() == [
        f'<script src="https://notify.shop.example{latest.path}"',
        f'        integrity="{widget.RELEASES[widget.LATEST]}"',
        '        crossorigin="anonymous" defer></script>',
        '<div data-backinstock-sku="A&quot;&lt;B" data-backinstock-key="pk_test" '
        'data-locale="en"></div>',
    ]
    assert f"{widget.gzip_size(latest.body):,} bytes gzipped" in result.stderr


async def _status_in_fresh_process(client: httpx.AsyncClient, key: str) -> int:
    # A revoked key stops working once the few-second key cache forgets it; a new app has
    # an empty cache, which is what a restarted or other API process sees.
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    app = create_app(runtime=transport.app.state.runtime)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as fresh:
        response = await fresh.post(
            "/v1/subscriptions", json=subscription_body(), headers=bearer(key)
        )
        return response.status_code


async def test_rotate_data_reseals_under_the_newest_keys(
    runtime: Runtime, make_client: ClientFactory, api_keys: dict[str, str], settings: Settings
) -> None:
    client = make_client()
    body = subscription_body(fallbacks=[{"channel": "email", "contact": "a@b.cn"}])
    first = (
        await client.post("/v1/subscriptions", json=body, headers=bearer(api_keys["subscribe"]))
    ).json()

    new_env = {
        "BACKINSTOCK_ENCRYPTION_KEYS": f"{new_key_spec('t2')},{settings.crypto.encryption_keys}",
        "BACKINSTOCK_BLIND_INDEX_KEY": f"{new_key_spec('t2')},{settings.crypto.blind_index_key}",
    }
    result = await run("keys", "rotate-data", env=new_env)
    assert result.exit_code == 0, result.stderr
    assert "re-encrypted 2 rows under key 't2'" in result.stderr

    async with runtime.sessions() as session:
        subs = list(await session.scalars(select(Subscription)))
        fallbacks = list(await session.scalars(select(SubscriptionFallback)))
    assert {s.contact_key_id for s in subs} == {"t2"} and {s.profile_key_id for s in subs} == {"t2"}
    assert {f.contact_key_id for f in fallbacks} == {"t2"}

    # A process with the new key ring reads them and still recognises the shopper.
    os.environ.update(new_env)
    try:
        new_settings = Settings.from_env()
    finally:
        os.environ["BACKINSTOCK_ENCRYPTION_KEYS"] = settings.crypto.encryption_keys
        os.environ["BACKINSTOCK_BLIND_INDEX_KEY"] = settings.crypto.blind_index_key
    rotated_keys = load_keys(new_settings.crypto, production=False)
    rt = dataclasses.replace(runtime, keys=rotated_keys, settings=new_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime=rt)), base_url="http://t"
    ) as new_client:
        again = await new_client.post(
            "/v1/subscriptions", json=body, headers=bearer(api_keys["subscribe"])
        )
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.json()["contact_masked"] == "+86 138****8000"
    assert again.json()["fallbacks"][0]["contact_masked"] == "a***@b.cn"


async def test_serve_refuses_generated_keys_with_postgres() -> None:
    env = {
        "BACKINSTOCK_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/nowhere",
        "BACKINSTOCK_ENCRYPTION_KEYS": "",
        "BACKINSTOCK_BLIND_INDEX_KEY": "",
        "BACKINSTOCK_TOKEN_KEY": "",
    }
    result = await run("serve", "--port", "1", env={**env, "BACKINSTOCK_LOG_JSON": "true"})
    assert result.exit_code == 2
    refusal = json.loads(result.stdout.strip().splitlines()[-1])  # a log line like any other
    assert refusal["event"] == "refusing_to_start"
    assert "BACKINSTOCK_ENCRYPTION_KEYS" in refusal["reason"]
    result = await run("serve", "--port", "1", env={**env, "BACKINSTOCK_LOG_JSON": "false"})
    assert result.exit_code == 2
    assert "Refusing to start" in result.stderr


def test_a_worker_host_can_take_some_queues_only(
    monkeypatch: pytest.MonkeyPatch,
    migrated: str,  # the command migrates the suite's database before it starts Dramatiq
) -> None:
    started: list[list[str]] = []

    def execv(path: str, args: list[str]) -> None:
        started.append(args)
        raise SystemExit(0)  # instead of becoming Dramatiq

    monkeypatch.setattr(os, "execv", execv)
    redis = {"BACKINSTOCK_REDIS_URL": "redis://127.0.0.1:6379/15"}
    assert invoke("worker", "--queue", "waves", env=redis).exit_code == 0
    assert invoke("worker", env=redis).exit_code == 0
    writers, every_queue = started
    assert writers[writers.index("--queues") + 1 :] == ["waves"]
    assert "--queues" not in every_queue  # Dramatiq's default: all of them

    refused = invoke("worker", "--queue", "wave", env=redis)
    assert refused.exit_code == 2
    assert "No such queue: wave (queues: dispatch, waves)" in refused.stderr
    assert len(started) == 2
