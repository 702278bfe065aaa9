"""Revision 0025 (``waves.request_id``) goes up over waves opened before it, which keep no
request id, and comes down again keeping them, on the suite's backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, select

from backinstock import migrations
from tests.scratch_db import scratch_database
from tests.test_storefront_migrations import NOW, ident, tables


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "wave_request_migration") as database:
        yield database


def test_revision_0025_keeps_waves_opened_before_it(scratch: tuple[str, Engine]) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0024")
    wave = {
        "id": ident(uuid.uuid4()), "sku": "SKU-1", "status": "open", "opened_at": NOW,
        "restock_id": ident(uuid.uuid4()), "step": 1, "target": 1, "planned": 1, "level": 1,
    }  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(tables(engine)["waves"]).values(wave))

    migrations.upgrade(url, "0025")
    waves = tables(engine)["waves"]
    with engine.connect() as connection:
        assert list(connection.execute(select(waves.c.sku, waves.c.request_id))) == [
            ("SKU-1", None)
        ]

    command.downgrade(migrations.alembic_config(url), "0024")
    waves = tables(engine)["waves"]
    assert "request_id" not in waves.c
    with engine.connect() as connection:
        assert list(connection.execute(select(waves.c.sku))) == [("SKU-1",)]
