"""Revision 0028: a message's wave is not a checked foreign key on PostgreSQL.

The writer inserts its own wave's id and no wave is ever deleted, so the check (a query of
``waves`` for every message written, and again for every message a claim updates twice)
guarded nothing. SQLite keeps the constraint: dropping it there rebuilds the table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect

from backinstock import migrations
from tests.conftest import BACKEND
from tests.scratch_db import scratch_database


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "wave_key") as database:
        yield database


def _referenced(engine: Engine) -> set[str]:
    """The tables ``notifications`` holds foreign keys on."""
    with engine.connect() as connection:
        keys = inspect(connection).get_foreign_keys("notifications")
    return {key["referred_table"] for key in keys}


def test_revision_0028_drops_the_wave_key_on_postgresql_and_back(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0028")
    after = _referenced(engine)
    assert "subscriptions" in after  # the shopper's key stays: its cascade erases messages
    assert ("waves" in after) is (BACKEND != "postgres")

    command.downgrade(migrations.alembic_config(url), "0027")
    assert {"subscriptions", "waves"} <= _referenced(engine)
