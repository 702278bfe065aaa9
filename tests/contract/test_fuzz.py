"""A bounded schemathesis run against a real server built from openapi.yaml: whatever the
input, the answer is never a 5xx, and documented answers match their schemas."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
ENV = {"BACKINSTOCK_RATE_LIMIT_PER_IP": "", "BACKINSTOCK_RATE_LIMIT_PER_CONTACT": ""}


def _create_key(name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "backinstock", "keys", "create", "--name", name]
        + [
            arg
            for scope in ("subscribe", "inventory", "stats", "admin")
            for arg in ("--scope", scope)
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def api_schema(
    migrated: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    key = _create_key("fuzz")
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    with ServerProcess(ENV, log) as server:
        schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
        schema.config.update(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"})
        yield schema


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    # schemathesis' pytest plugin lags behind pytest; drive its hypothesis strategies directly.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            response = case.call(timeout=10)
            calls.append(response.status_code)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

        run()
    assert len(calls) >= 5 * len(operations), "the fuzzer barely ran"
    assert any(400 <= code < 500 for code in calls), "no bad input was generated"
