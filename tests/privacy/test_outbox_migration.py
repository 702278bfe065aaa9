"""Migration 0009 seals the subject and body of dev-outbox rows written before it, and its
downgrade opens them again, on the suite's backend (a scratch database of its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from alembic import command
from sqlalchemy import Engine, text

from backinstock import migrations
from backinstock.config import CryptoSettings
from backinstock.crypto import load_keys
from backinstock.senders.outbox import open_content
from tests.conftest import BACKEND
from tests.scratch_db import scratch_database

BODY = "张女士，您关注的「红色T恤 M」到货了！http://127.0.0.1:8000/r/AQGiJmwSGn-Ou_SgcfzQ"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """(async URL for Alembic, sync engine for the test) of an empty database."""
    with scratch_database(tmp_path, "migration") as database:
        yield database


def _insert_plain_row(engine: Engine, row_id: uuid.UUID) -> None:
    """A plaintext row as the previous revision wrote it, with its notification (whose own
    subscription and wave are not the point: foreign keys are off for this insert)."""

    def ident(value: uuid.UUID) -> object:
        return value if BACKEND == "postgres" else value.hex

    notification = uuid.uuid4()
    with engine.begin() as connection:
        if BACKEND == "postgres":
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(
            text(
                "INSERT INTO notifications (id, subscription_id, wave_id, sku, step, level, "
                "queue_size, status, attempts, next_attempt_at, created_at) VALUES "
                "(:id, :sub, :wave, 'SKU-1', 1, 1, 1, 'sent', 1, CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            ),
            {"id": ident(notification), "sub": ident(uuid.uuid4()), "wave": ident(uuid.uuid4())},
        )
        connection.execute(
            text(
                "INSERT INTO dev_outbox (id, notification_id, channel, recipient_masked, "
                "recipient_key_id, recipient_blob, subject, body, created_at) VALUES "
                "(:id, :nid, 'email', 'a***@b.cn', 'k', :blob, 'Back in stock', :body, "
                "CURRENT_TIMESTAMP)"
            ),
            {
                "id": ident(row_id),
                "nid": ident(notification),
                "blob": b"sealed recipient",
                "body": BODY,
            },
        )


def test_rows_written_before_are_sealed_and_open_again_on_downgrade(
    scratch: tuple[str, Engine],
) -> None:
    url, engine = scratch
    migrations.upgrade(url, "0008")
    row_id = uuid.uuid4()
    _insert_plain_row(engine, row_id)

    migrations.upgrade(url)
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT content_key_id, content_blob FROM dev_outbox")
        ).one()
    assert BODY.encode() not in bytes(stored.content_blob)
    cipher = load_keys(CryptoSettings(), production=False).cipher
    row = SimpleNamespace(id=row_id, content_key_id=stored[0], content_blob=bytes(stored[1]))
    opened = open_content(cipher, row)
    assert (opened.subject, opened.body) == ("Back in stock", BODY)

    command.downgrade(migrations.alembic_config(url), "0008")
    with engine.connect() as connection:
        restored = connection.execute(text("SELECT subject, body FROM dev_outbox")).one()
    assert tuple(restored) == ("Back in stock", BODY)
