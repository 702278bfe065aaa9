"""A product's own rules through the API and the command line: replaced whole, shown with
their sources, refused in the one error shape when out of bounds, of the wrong JSON type
or unknown, read by admin keys only; and a SKU's channels refuse other subscriptions."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from typer.testing import Result

from backinstock.config import Settings
from tests.catalog.helpers import SKU, get_policy, policy_path, put_policy
from tests.commands import invoke
from tests.helpers import bearer, phone, subscription_body

POLICY_NAMES = (
    "batch_multiplier",
    "batch_interval_seconds",
    "hold_seconds",
    "followup_after_seconds",
    "soldout_compensation",
    "substitute_after_seconds",
    "channels",
)


def from_settings(settings: Settings) -> dict[str, Any]:
    return {
        "batch_multiplier": {"value": settings.waves.batch_multiplier, "source": "settings"},
        "batch_interval_seconds": {
            "value": settings.waves.batch_interval_seconds,
            "source": "settings",
        },
        "hold_seconds": {"value": settings.waves.hold_seconds, "source": "settings"},
        "followup_after_seconds": {
            "value": settings.conversion.followup_after_seconds,
            "source": "settings",
        },
        "soldout_compensation": {
            "value": settings.conversion.soldout_compensation.value,
            "source": "settings",
        },
        "substitute_after_seconds": {
            "value": settings.conversion.substitute_after_seconds,
            "source": "settings",
        },
        "channels": {"value": ["sms", "email", "wechat"], "source": "settings"},
    }


async def test_a_policy_is_replaced_whole_and_each_rule_says_where_it_comes_from(
    client: httpx.AsyncClient, api_keys: dict[str, str], settings: Settings
) -> None:
    admin = api_keys["admin"]
    fresh = await get_policy(client, admin)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json() == {"sku": SKU, "policy": from_settings(settings), "updated_at": None}

    body = {
        "batch_multiplier": 2,
        "hold_seconds": 900,
        "followup_after_seconds": 7200,
        "soldout_compensation": "coupon",
        "substitute_after_seconds": 86_400,
        "channels": ["email", "sms"],
    }
    put = await put_policy(client, admin, body)
    assert put.status_code == 200, put.text
    answer = put.json()
    assert answer["policy"] == {
        **from_settings(settings),
        "batch_multiplier": {"value": 2.0, "source": "product"},
        "hold_seconds": {"value": 900, "source": "product"},
        "followup_after_seconds": {"value": 7200, "source": "product"},
        "soldout_compensation": {"value": "coupon", "source": "product"},
        "substitute_after_seconds": {"value": 86_400, "source": "product"},
        "channels": {"value": ["sms", "email"], "source": "product"},  # in the usual order
    }
    assert answer["updated_at"] is not None
    assert (await get_policy(client, admin)).json() == answer, "PUT answers what GET answers"

    # A PUT replaces the whole set: a rule left out or null goes back to the setting.
    replaced = await put_policy(
        client, admin, {"batch_interval_seconds": 90.5, "batch_multiplier": None}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["policy"] == {
        **from_settings(settings),
        "batch_interval_seconds": {"value": 90.5, "source": "product"},
    }
    cleared = await put_policy(client, admin, {})
    assert cleared.json()["policy"] == from_settings(settings)
    assert cleared.json()["updated_at"] is not None

    other = await get_policy(client, admin, sku="SKU-2")
    assert other.json() == {"sku": "SKU-2", "policy": from_settings(settings), "updated_at": None}


async def test_null_removes_an_override(
    client: httpx.AsyncClient, api_keys: dict[str, str], settings: Settings
) -> None:
    admin = api_keys["admin"]
    await put_policy(client, admin, {"batch_multiplier": 3, "channels": ["wechat"]})
    answer = await put_policy(client, admin, {"batch_multiplier": 3, "channels": None})
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"]["channels"] == from_settings(settings)["channels"]
    assert answer.json()["policy"]["batch_multiplier"] == {"value": 3.0, "source": "product"}


REFUSED = [
    # Not a rule.
    ({"sold_out_compensation": "coupon"}, "sold_out_compensation"),
    ({"BATCH_MULTIPLIER": 2}, "BATCH_MULTIPLIER"),
    # Out of the settings' bounds.
    ({"batch_multiplier": 0}, "batch_multiplier"),
    ({"batch_multiplier": -1.5}, "batch_multiplier"),
    ({"batch_multiplier": 1000.5}, "batch_multiplier"),
    ({"batch_interval_seconds": 0}, "batch_interval_seconds"),
    ({"batch_interval_seconds": 0.5}, "batch_interval_seconds"),
    ({"batch_interval_seconds": 2_592_001}, "batch_interval_seconds"),
    ({"hold_seconds": -1}, "hold_seconds"),
    ({"hold_seconds": 2_592_001}, "hold_seconds"),
    ({"followup_after_seconds": -1}, "followup_after_seconds"),
    ({"followup_after_seconds": 31_536_001}, "followup_after_seconds"),
    # Of the wrong JSON type.
    ({"batch_multiplier": "2"}, "batch_multiplier"),
    ({"batch_multiplier": True}, "batch_multiplier"),
    ({"batch_interval_seconds": [600]}, "batch_interval_seconds"),
    ({"hold_seconds": 60.0}, "hold_seconds"),
    ({"followup_after_seconds": 3600.0}, "followup_after_seconds"),
    ({"followup_after_seconds": "3600"}, "followup_after_seconds"),
    ({"channels": "sms"}, "channels"),
    # Compensation: one of its three modes, as a string.
    ({"soldout_compensation": "always"}, "soldout_compensation"),
    ({"soldout_compensation": "COUPON"}, "soldout_compensation"),
    ({"soldout_compensation": True}, "soldout_compensation"),
    # The substitute message's wait: whole seconds, at most 365 days.
    ({"substitute_after_seconds": -1}, "substitute_after_seconds"),
    ({"substitute_after_seconds": 31_536_001}, "substitute_after_seconds"),
    ({"substitute_after_seconds": 60.0}, "substitute_after_seconds"),
    ({"substitute_after_seconds": "60"}, "substitute_after_seconds"),
    # Channels: known ones, at least one, each once.
    ({"channels": ["fax"]}, "channels.0"),
    ({"channels": []}, "channels"),
    ({"channels": ["sms", "sms"]}, "channels"),
]


@pytest.mark.parametrize(("body", "field"), REFUSED)
async def test_a_rule_out_of_bounds_of_another_type_or_unknown_is_a_422_naming_it(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    admin = api_keys["admin"]
    kept = (await put_policy(client, admin, {"batch_multiplier": 2})).json()
    refused = await put_policy(client, admin, {"batch_interval_seconds": 60, **body})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_field" and error["message"]
    assert [detail["field"] for detail in error["details"]] == [field]
    assert (await get_policy(client, admin)).json() == kept, "nothing of the body is kept"


@pytest.mark.parametrize("sku", ["has%20space", "x" * 129])
async def test_a_sku_that_cannot_be_one_is_a_422(
    client: httpx.AsyncClient, api_keys: dict[str, str], sku: str
) -> None:
    admin = api_keys["admin"]
    for response in (
        await get_policy(client, admin, sku=sku),
        await put_policy(client, admin, {}, sku=sku),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "sku"


async def test_a_sku_with_a_slash_has_a_policy_of_its_own(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    admin = api_keys["admin"]
    put = await put_policy(client, admin, {"batch_multiplier": 4}, sku="TEE/RED")
    assert put.status_code == 200 and put.json()["sku"] == "TEE/RED", put.text
    encoded = await get_policy(client, admin, sku="TEE%2FRED")
    assert encoded.json()["policy"]["batch_multiplier"]["value"] == 4.0
    assert (await get_policy(client, admin, sku="RED")).json()["updated_at"] is None


async def test_only_admin_keys_read_or_change_a_policy(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    for scope in ("subscribe", "inventory", "stats"):
        key = api_keys[scope]
        for response in (
            await get_policy(client, key),
            await put_policy(client, key, {"batch_multiplier": 2}),
        ):
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert error["code"] == "forbidden" and "'admin' scope" in error["message"]
    anonymous = await client.put(policy_path(), json={"batch_multiplier": 2})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert (await get_policy(client, api_keys["admin"])).json()["updated_at"] is None


async def _subscribe(
    client: httpx.AsyncClient, key: str, sku: str, channel: str, n: int, **extra: Any
) -> httpx.Response:
    contact = phone(n) if channel == "sms" else f"shopper{n}@example.com"
    body = subscription_body(sku=sku, channel=channel, contact=contact, **extra)
    return await client.post("/v1/subscriptions", json=body, headers=bearer(key))


async def test_a_sku_refuses_subscriptions_on_channels_its_policy_does_not_take(
    client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    key, admin = api_keys["subscribe"], api_keys["admin"]
    before = await _subscribe(client, key, SKU, "sms", 1)
    assert before.status_code == 201, before.text
    assert (await put_policy(client, admin, {"channels": ["email"]})).status_code == 200

    refused = await _subscribe(client, key, SKU, "sms", 2)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["details"] == [
        {"field": "channel", "message": "this product takes subscriptions on email only"}
    ]
    assert phone(2) not in refused.text
    fallback = [{"channel": "sms", "contact": phone(3)}]
    with_sms = await _subscribe(client, key, SKU, "email", 3, fallbacks=fallback)
    assert with_sms.status_code == 422, with_sms.text
    assert with_sms.json()["error"]["details"][0]["field"] == "fallbacks.0.channel"

    assert (await _subscribe(client, key, SKU, "email", 4)).status_code == 201
    assert (await _subscribe(client, key, "SKU-2", "sms", 5)).status_code == 201, "its own rules"
    again = await _subscribe(client, key, SKU, "sms", 1)
    assert again.status_code == 422, "a repeat is a subscription on that channel too"
    assert (await put_policy(client, admin, {"channels": None})).status_code == 200
    assert (await _subscribe(client, key, SKU, "sms", 2)).status_code == 201


async def run(*args: str) -> Result:
    """``backinstock ARGS`` in this process, in a thread: a command runs its own event loop."""
    return await asyncio.to_thread(invoke, *args)


async def test_the_policy_command_sets_clears_and_shows_rules(
    client: httpx.AsyncClient, api_keys: dict[str, str], settings: Settings
) -> None:
    admin = api_keys["admin"]
    made = await run("policy", "set", SKU, "batch_multiplier=2.5", "channels=email,sms")
    assert made.exit_code == 0, made.stderr
    assert "batch_multiplier" in made.stdout and "2.5" in made.stdout
    policy = (await get_policy(client, admin)).json()["policy"]
    assert policy["batch_multiplier"] == {"value": 2.5, "source": "product"}
    assert policy["channels"] == {"value": ["sms", "email"], "source": "product"}

    changed = await run(
        "policy",
        "set",
        SKU,
        "followup_after_seconds=7200",
        "soldout_compensation=message",
        "--clear",
        "channels",
    )
    assert changed.exit_code == 0, changed.stderr
    policy = (await get_policy(client, admin)).json()["policy"]
    assert policy == {
        **from_settings(settings),
        "batch_multiplier": {"value": 2.5, "source": "product"},  # kept
        "followup_after_seconds": {"value": 7200, "source": "product"},
        "soldout_compensation": {"value": "message", "source": "product"},
    }

    for refused in (
        await run("policy", "set", SKU, "batch_multiplier=0"),
        await run("policy", "set", SKU, "followup_after_seconds=1.5"),
    ):
        assert refused.exit_code == 1 and refused.stdout == ""
        assert "nothing was changed" in " ".join(refused.stderr.split())
    unknown = await run("policy", "set", SKU, "colour=red")
    assert unknown.exit_code == 2 and "NAME=VALUE" in unknown.stderr
    assert (await run("policy", "set", SKU, "--clear", "colour")).exit_code == 2
    assert (await get_policy(client, admin)).json()["policy"] == policy, "nothing changed"

    unset = await run("policy", "set", SKU, "batch_multiplier=null")
    assert unset.exit_code == 0, unset.stderr
    shown = await run("policy", "show", SKU)
    assert shown.exit_code == 0, shown.stderr
    cells = [
        [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        for line in shown.stdout.splitlines()
    ]
    rows = {row[0]: row[1:] for row in cells if row and row[0] in POLICY_NAMES}
    assert rows == {
        "batch_multiplier": [f"{settings.waves.batch_multiplier:g}", "settings"],
        "batch_interval_seconds": [f"{settings.waves.batch_interval_seconds:g}", "settings"],
        "hold_seconds": [f"{settings.waves.hold_seconds:g}", "settings"],
        "followup_after_seconds": ["7200", "product"],
        "soldout_compensation": ["message", "product"],
        "substitute_after_seconds": [
            f"{settings.conversion.substitute_after_seconds:g}",
            "settings",
        ],
        "channels": ["sms,email,wechat", "settings"],
    }
