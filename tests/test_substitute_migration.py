"""Revision 0020 on the suite's backend: the offers and sales tables, the SKU's own wait,
and one substitute message per subscription held by the database; down again to 0018."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from backinstock import migrations
from tests.scratch_db import scratch_database
from tests.test_storefront_migrations import notification, subscription, tables


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "substitute_migration") as database:
        yield database


def test_revision_0020_holds_one_substitute_message_per_subscription_and_goes_down(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    command.upgrade(migrations.alembic_config(url), "0020")
    t = tables(engine)
    assert {"substitute_offers", "substitute_sales"} <= set(t)
    assert "substitute_after_seconds" in t["product_policies"].c
    sub = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(insert(t["subscriptions"]).values(subscription(sub, "waiting", b"i")))
        for kind in ("substitute", "confirmation", "confirmation"):
            row = {**notification(uuid.uuid4(), sub, None), "kind": kind}
            connection.execute(insert(t["notifications"]).values(row))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        second = {**notification(uuid.uuid4(), sub, None), "kind": "substitute"}
        connection.execute(insert(t["notifications"]).values(second))

    command.downgrade(migrations.alembic_config(url), "0018")
    t = tables(engine)
    assert "substitute_offers" not in t and "substitute_sales" not in t
    assert "substitute_after_seconds" not in t["product_policies"].c
    with engine.begin() as connection:
        again = {**notification(uuid.uuid4(), sub, None), "kind": "substitute"}
        connection.execute(insert(t["notifications"]).values(again))
