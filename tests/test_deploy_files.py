"""The deploy files, read as data (no Docker daemon needed): docker-compose.yml and the
Dockerfile give every service a healthcheck it can pass, take the data keys from the
environment with a message naming the command that makes them, trust no forwarded headers,
and the commands the README gives for compose exist and work."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from backinstock.cli import ENV_KEY_SETTINGS
from backinstock.config import CryptoSettings
from backinstock.crypto import KeyRing, load_keys
from tests.commands import invoke as run

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``backinstock ARGS`` as its own process, as a container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "backinstock", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _dockerfile_healthcheck() -> str:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return next(line for line in lines if line.startswith("HEALTHCHECK"))


def test_the_image_healthcheck_is_http(compose: dict[str, Any]) -> None:
    # Why the worker needs its own: the image's asks /healthz on :8000, which only `serve` has.
    assert "/healthz" in _dockerfile_healthcheck()
    entrypoint = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRY")
    )
    assert '["backinstock"]' in entrypoint  # so `docker run IMAGE keys …` runs the CLI
    assert "healthcheck" not in compose["services"]["api"]  # the api serves /healthz


def test_worker_healthcheck_is_passable_or_disabled(compose: dict[str, Any]) -> None:
    check = compose["services"]["worker"].get("healthcheck")
    assert check is not None, "the worker would inherit the image's HTTP healthcheck"
    if check.get("disable") is True:
        return
    test = check["test"]
    command = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    text = " ".join(command)
    assert "healthz" not in text and "8000" not in text and "urllib" not in text
    assert command[:2] == ["backinstock", "check"]
    shown = run(*command[1:], "--help")
    assert shown.exit_code == 0, shown.stderr


@pytest.mark.parametrize("service", ["api", "worker"])
def test_services_take_the_keys_from_the_environment(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]
    for setting in ENV_KEY_SETTINGS:
        value = env[setting]
        match = re.fullmatch(r"\$\{(\w+):\?(.+)\}", value)
        assert match, f"{service}: {setting} must be required from the environment"
        assert match.group(1) == setting
        assert "keys generate-env" in match.group(2)
        assert "With Docker Compose" in match.group(2)


@pytest.mark.parametrize("service", ["api", "worker"])
def test_no_forwarded_headers_are_trusted(compose: dict[str, Any], service: str) -> None:
    env = compose["services"][service]["environment"]
    assert env.get("BACKINSTOCK_FORWARDED_ALLOW_IPS", "") == ""


def test_generate_env_prints_three_loadable_key_rings(tmp_path: Path) -> None:
    done = cli("keys", "generate-env")
    assert done.returncode == 0, done.stderr
    values: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and name not in values, line
        values[name] = value
    assert tuple(values) == ENV_KEY_SETTINGS
    for name, value in values.items():
        ring = KeyRing.parse(value, name)
        assert ring.newest[0] == "k1"
    keys = load_keys(
        CryptoSettings(
            encryption_keys=values["BACKINSTOCK_ENCRYPTION_KEYS"],
            blind_index_key=values["BACKINSTOCK_BLIND_INDEX_KEY"],
            token_key=values["BACKINSTOCK_TOKEN_KEY"],
            key_file=str(tmp_path / "unused.json"),
        ),
        production=True,
    )
    assert keys.cipher.newest_key_id == "k1"
    assert not (tmp_path / "unused.json").exists()
    again = run("keys", "generate-env")
    assert set(again.stdout.splitlines()[2:]).isdisjoint(done.stdout.splitlines()[2:])


def _readme_compose_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### With Docker Compose")
    return readme[start : readme.index("\n### ", start + 1)]


def test_readme_compose_commands_exist() -> None:
    section = _readme_compose_section()
    commands = re.findall(r"backinstock ((?:keys|check)[^`\n>]*)", section)
    assert any(c.startswith("keys generate-env") for c in commands)
    assert any(c.startswith("keys create") for c in commands)
    for command in commands:
        words = shlex.split(command)
        # every option the README passes must be one the command knows
        shown = run(*[w for w in words if not w.startswith("-")][:2], "--help")
        assert shown.exit_code == 0, (command, shown.stderr)
        for option in (w for w in words if w.startswith("--")):
            assert option in shown.stdout, (command, option)


def test_check_passes_when_the_database_and_redis_answer(migrated: str) -> None:
    done = cli("check")
    assert done.returncode == 0, done.stderr


def test_check_fails_when_redis_does_not_answer(migrated: str) -> None:
    unreachable = "redis://:sekrit@127.0.0.1:1/0"
    done = run("check", "--timeout", "2", env={"BACKINSTOCK_REDIS_URL": unreachable})
    assert done.exit_code == 1
    assert "redis does not answer" in done.stderr
    assert "sekrit" not in done.stderr + done.stdout
