from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import httpx
from sqlalchemy import select

from backinstock.config import Settings
from backinstock.crypto import load_keys, new_key_spec
from backinstock.main import create_app
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription, SubscriptionFallback
from tests.conftest import ClientFactory
from tests.helpers import bearer, subscription_body


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
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
    created = cli("keys", "create", "--name", "storefront", "--scope", "subscribe")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("bis_") and len(key) > 40
    ok = await client.post("/v1/subscriptions", json=subscription_body(), headers=bearer(key))
    assert ok.status_code == 201

    listed = cli("keys", "list")
    assert "storefront" in listed.stdout and key not in listed.stdout

    duplicate = cli("keys", "create", "--name", "storefront", "--scope", "stats")
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    bad_scope = cli("keys", "create", "--name", "x", "--scope", "root")
    assert bad_scope.returncode != 0

    revoked = cli("keys", "revoke", "storefront")
    assert revoked.returncode == 0, revoked.stderr
    assert await _status_in_fresh_process(client, key) == 401


async def test_an_existing_name_fails_on_stderr_and_keeps_its_key(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    first = cli("keys", "create", "--name", "storefront", "--scope", "subscribe")
    key = first.stdout.strip()
    assert first.returncode == 0 and key.startswith("bis_"), "stdout carries the key alone"

    again = cli("keys", "create", "--name", "storefront", "--scope", "subscribe")
    assert again.returncode == 1 and again.stdout == ""
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
    old = cli("keys", "create", "--name", "storefront", "--scope", "subscribe").stdout.strip()
    replaced = cli("keys", "create", "--name", "storefront", "--scope", "subscribe", "--replace")
    assert replaced.returncode == 0, replaced.stderr
    new = replaced.stdout.strip()
    assert new.startswith("bis_") and new != old
    assert "replaced key 'storefront'" in " ".join(replaced.stderr.split())
    assert await _status_in_fresh_process(client, old) == 401
    assert await _status_in_fresh_process(client, new) == 201
    assert cli("keys", "list").stdout.count("storefront") == 1

    # A revoked name comes back with --replace; a new name is simply created with it.
    assert cli("keys", "revoke", "storefront").returncode == 0
    revived = cli("keys", "create", "--name", "storefront", "--scope", "subscribe", "--replace")
    # 200: the same shopper again, already waiting
    assert await _status_in_fresh_process(client, revived.stdout.strip()) == 200
    fresh = cli("keys", "create", "--name", "erp", "--scope", "inventory", "--replace")
    assert fresh.returncode == 0 and "created key 'erp'" in fresh.stderr


async def test_publishable_keys_are_created_for_origins_listed_and_revoked(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    created = cli(
        "keys", "create", "--name", "shop-page", "--publishable",
        "--origin", "https://Shop.example/", "--origin", "http://localhost:5173",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("pk_") and len(key) > 40
    assert "https://shop.example" in created.stderr

    listed = cli("keys", "list").stdout
    assert "shop-page" in listed and "publishable" in listed and key not in listed
    assert "https://shop.example" in listed and "http://localhost:5173" in listed

    for refused in (
        ["--origin", "http://shop.example"],  # http from a public host
        ["--origin", "https://shop.example/p/1"],  # a path
        [],  # no origin
        ["--origin", "https://shop.example", "--scope", "subscribe"],  # scopes
    ):
        result = cli("keys", "create", "--name", "other", "--publishable", *refused)
        assert result.returncode == 2 and result.stdout == "", refused
    no_scope = cli("keys", "create", "--name", "other")
    origin_alone = cli("keys", "create", "--name", "other", "--origin", "https://shop.example")
    assert no_scope.returncode == 2 and origin_alone.returncode == 2
    assert "other" not in cli("keys", "list").stdout

    assert cli("keys", "revoke", "shop-page").returncode == 0
    assert await _status_in_fresh_process(client, key) == 401


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
    result = cli("keys", "rotate-data", env=new_env)
    assert result.returncode == 0, result.stderr
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


def test_serve_refuses_generated_keys_with_postgres() -> None:
    env = {
        "BACKINSTOCK_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/nowhere",
        "BACKINSTOCK_ENCRYPTION_KEYS": "",
        "BACKINSTOCK_BLIND_INDEX_KEY": "",
        "BACKINSTOCK_TOKEN_KEY": "",
    }
    result = cli("serve", "--port", "1", env={**env, "BACKINSTOCK_LOG_JSON": "true"})
    assert result.returncode == 2
    refusal = json.loads(result.stdout.strip().splitlines()[-1])  # a log line like any other
    assert refusal["event"] == "refusing_to_start"
    assert "BACKINSTOCK_ENCRYPTION_KEYS" in refusal["reason"]
    result = cli("serve", "--port", "1", env={**env, "BACKINSTOCK_LOG_JSON": "false"})
    assert result.returncode == 2
    assert "Refusing to start" in result.stderr
