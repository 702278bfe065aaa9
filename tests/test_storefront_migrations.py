"""Revisions 0011-0013 (product names per locale, publishable keys, double opt-in) go up
over rows written before them and come down again, on the suite's backend, losing nothing
of the older schema: in particular the SQLite change of ``notifications.wave_id`` rewrites
no row and fires no foreign key (the dev outbox's rows, which cascade from notifications,
are still there)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, Table, func, insert, select
from sqlalchemy.exc import IntegrityError

from backinstock import migrations
from tests.conftest import BACKEND
from tests.scratch_db import scratch_database

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with scratch_database(tmp_path, "storefront_migration") as database:
        yield database


def ident(value: uuid.UUID) -> Any:
    return value if BACKEND == "postgres" else value.hex


def tables(engine: Engine) -> dict[str, Table]:
    metadata = MetaData()
    metadata.reflect(engine)
    return dict(metadata.tables)


def subscription(sub_id: uuid.UUID, status: str, index: bytes) -> dict[str, Any]:
    return {
        "id": ident(sub_id),
        "sku": "SKU-1",
        "channel": "sms",
        "contact_index": index,
        "locale": "zh-CN",
        "priority": "standard",
        "priority_rank": 1,
        "status": status,
        "notification_count": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }


def notification(row_id: uuid.UUID, sub_id: uuid.UUID, wave: uuid.UUID | None) -> dict[str, Any]:
    return {
        "id": ident(row_id),
        "subscription_id": ident(sub_id),
        "wave_id": ident(wave) if wave else None,
        "sku": "SKU-1",
        "step": 1,
        "level": 1,
        "queue_size": 1,
        "status": "sent",
        "attempts": 1,
        "next_attempt_at": NOW,
        "created_at": NOW,
    }


def count(engine: Engine, table: str) -> int:
    t = tables(engine)[table]
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(t)) or 0)


def test_the_storefront_revisions_go_up_and_down_over_existing_rows(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0010")
    sub, wave, message, outbox = (uuid.uuid4() for _ in range(4))
    t = tables(engine)
    with engine.begin() as connection:
        connection.execute(insert(t["subscriptions"]).values(subscription(sub, "notified", b"i1")))
        connection.execute(
            insert(t["waves"]).values(
                id=ident(wave), sku="SKU-1", status="open", opened_at=NOW,
                restock_id=ident(uuid.uuid4()), step=1, target=1, planned=1, level=1,
            )
        )  # fmt: skip
        connection.execute(insert(t["notifications"]).values(notification(message, sub, wave)))
        connection.execute(
            insert(t["dev_outbox"]).values(
                id=ident(outbox), notification_id=ident(message), channel="sms",
                recipient_masked="+86 138****0001", recipient_key_id="k",
                recipient_blob=b"sealed", content_key_id="k", content_blob=b"sealed",
                created_at=NOW,
            )
        )  # fmt: skip
        connection.execute(
            insert(t["api_keys"]).values(
                name="secret", key_hash=b"h" * 32, prefix="bis_x", scopes="subscribe",
                created_at=NOW,
            )
        )  # fmt: skip

    migrations.upgrade(url)
    t = tables(engine)
    assert count(engine, "dev_outbox") == 1 and count(engine, "notifications") == 1
    assert {"confirmed_at"} <= set(t["subscriptions"].c.keys())
    assert t["notifications"].c.wave_id.nullable
    with engine.begin() as connection:
        kind = connection.scalar(select(t["api_keys"].c.kind))
        assert kind == "secret"
        # What the new revisions hold: a publishable key, a per-locale name, a pending
        # request (the same contact as a waiting one of another SKU is fine) and its
        # confirmation message, in no wave.
        connection.execute(
            insert(t["api_keys"]).values(
                name="page", key_hash=b"p" * 32, prefix="pk_x", scopes="", created_at=NOW,
                kind="publishable", origins="https://shop.example",
            )
        )  # fmt: skip
        connection.execute(insert(t["products"]).values(sku="SKU-1", updated_at=NOW))
        connection.execute(
            insert(t["product_names"]).values(
                sku="SKU-1", locale="en", name="Red T", created_at=NOW, updated_at=NOW
            )
        )
        pending = uuid.uuid4()
        connection.execute(
            insert(t["subscriptions"]).values(subscription(pending, "pending", b"i2"))
        )
        connection.execute(
            insert(t["notifications"]).values(
                {**notification(uuid.uuid4(), pending, None), "kind": "confirmation"}
            )
        )
    with pytest.raises(IntegrityError), engine.begin() as connection:
        # One pending-or-waiting subscription per SKU and contact.
        connection.execute(
            insert(t["subscriptions"]).values(subscription(uuid.uuid4(), "waiting", b"i2"))
        )

    command.downgrade(migrations.alembic_config(url), "0010")
    t = tables(engine)
    assert "product_names" not in t and "confirmations_sent" not in t
    assert "kind" not in t["api_keys"].c and "confirmed_at" not in t["subscriptions"].c
    assert not t["notifications"].c.wave_id.nullable
    with engine.connect() as connection:
        assert connection.scalars(select(t["api_keys"].c.name)).all() == ["secret"]
        assert connection.scalars(select(t["subscriptions"].c.status)).all() == ["notified"]
    assert count(engine, "dev_outbox") == 1 and count(engine, "notifications") == 1
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert(t["notifications"]).values(notification(uuid.uuid4(), sub, None)))

    migrations.upgrade(url)
    assert tables(engine)["notifications"].c.wave_id.nullable
    assert count(engine, "dev_outbox") == 1
