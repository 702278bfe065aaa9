"""Revision 0019 (subscription attributes) goes up over subscriptions written before it and
comes down again, on the suite's backend, losing none of them nor their dependants."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, insert, inspect, select

from backinstock import migrations
from tests.scratch_db import scratch_database
from tests.test_storefront_migrations import count, notification, subscription, tables


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "attributes_migration") as database:
        yield database


def test_0019_adds_attributes_and_an_indexed_segment_and_comes_down_again(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    config = migrations.alembic_config(url)
    command.upgrade(config, "0018")
    sub = uuid.uuid4()
    with engine.begin() as connection:
        t = tables(engine)
        connection.execute(insert(t["subscriptions"]).values(subscription(sub, "waiting", b"i1")))
        connection.execute(insert(t["notifications"]).values(notification(uuid.uuid4(), sub, None)))

    command.upgrade(config, "0019")
    t = tables(engine)
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("subscriptions")}
    assert indexes["ix_subscriptions_segment"] == ["segment"]
    with engine.connect() as connection:
        row = connection.execute(
            select(t["subscriptions"].c.attributes, t["subscriptions"].c.segment)
        ).one()
    assert tuple(row) == (None, None), "older subscriptions carry no attributes"

    command.downgrade(config, "0018")
    t = tables(engine)
    assert "attributes" not in t["subscriptions"].c and "segment" not in t["subscriptions"].c
    assert count(engine, "subscriptions") == 1 and count(engine, "notifications") == 1
