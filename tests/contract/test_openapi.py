"""openapi.yaml is the published contract: it must be exactly what the app serves."""

from __future__ import annotations

from pathlib import Path

import yaml

from backinstock.openapi import document

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_the_app() -> None:
    published = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    assert published == document(), "openapi.yaml drifted: run `make openapi` and review"


def test_operation_ids_are_stable_and_unique() -> None:
    operations = [
        op
        for path in document()["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    ]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids))
    assert "createSubscription" in ids and "eraseContact" in ids
    assert all("_" not in i for i in ids), "operation ids are camelCase, not generated"
