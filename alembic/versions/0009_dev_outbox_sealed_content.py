"""dev outbox: subject and body sealed like contacts

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 10:00:00.000000

A rendered message holds the shopper's name and live click and unsubscribe tokens; the dev
outbox kept them in plaintext beside the sealed recipient. They become one AES-GCM sealed
JSON document (``content_key_id``, ``content_blob``). Rows already written are sealed with
the key ring of the environment; without one (nothing could open them later anyway) they
are deleted: the dev outbox is a development view of messages never sent.
"""

import json
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
import structlog
from alembic import op

from backinstock.config import CryptoSettings
from backinstock.crypto import FieldCipher, KeyConfigError, Sealed, load_keys

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = structlog.get_logger("backinstock.migrations")
_BATCH = 1000

# The stored form as of this revision (senders/outbox.py may move on; this must not).
_outbox = sa.table(
    "dev_outbox",
    sa.column("id", sa.Uuid()),
    sa.column("subject", sa.String()),
    sa.column("body", sa.Text()),
    sa.column("content_key_id", sa.String()),
    sa.column("content_blob", sa.LargeBinary()),
)


def _aad(row_id: uuid.UUID) -> bytes:
    return b"outbox-content:" + row_id.bytes


def _cipher(production: bool) -> FieldCipher | None:
    try:
        return load_keys(CryptoSettings(), production=production).cipher
    except KeyConfigError:
        return None


def _seal_existing() -> None:
    bind = op.get_bind()
    if bind.execute(sa.select(sa.func.count()).select_from(_outbox)).scalar_one() == 0:
        return
    cipher = _cipher(production=bind.dialect.name != "sqlite")
    if cipher is None:
        bind.execute(sa.delete(_outbox))
        log.warning("dev_outbox_rows_deleted", reason="no key ring to seal them with")
        return
    after: uuid.UUID | None = None
    while True:
        query = sa.select(_outbox.c.id, _outbox.c.subject, _outbox.c.body)
        if after is not None:
            query = query.where(_outbox.c.id > after)
        rows = bind.execute(query.order_by(_outbox.c.id).limit(_BATCH)).all()
        if not rows:
            return
        for row_id, subject, body in rows:
            document = json.dumps({"subject": subject, "body": body}, ensure_ascii=False)
            sealed = cipher.seal(document, _aad(row_id))
            bind.execute(
                sa.update(_outbox)
                .where(_outbox.c.id == row_id)
                .values(content_key_id=sealed.key_id, content_blob=sealed.blob)
            )
        after = rows[-1][0]


def _open_existing() -> None:
    bind = op.get_bind()
    if bind.execute(sa.select(sa.func.count()).select_from(_outbox)).scalar_one() == 0:
        return
    cipher = _cipher(production=bind.dialect.name != "sqlite")
    if cipher is None:
        bind.execute(sa.delete(_outbox))
        return
    rows = bind.execute(
        sa.select(_outbox.c.id, _outbox.c.content_key_id, _outbox.c.content_blob)
    ).all()
    for row_id, key_id, blob in rows:
        document = json.loads(cipher.open(Sealed(key_id, blob), _aad(row_id)))
        bind.execute(
            sa.update(_outbox)
            .where(_outbox.c.id == row_id)
            .values(subject=document["subject"], body=document["body"])
        )


def upgrade() -> None:
    with op.batch_alter_table("dev_outbox") as batch:
        batch.add_column(sa.Column("content_key_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("content_blob", sa.LargeBinary(), nullable=True))
    _seal_existing()
    with op.batch_alter_table("dev_outbox") as batch:
        batch.alter_column("content_key_id", existing_type=sa.String(length=32), nullable=False)
        batch.alter_column("content_blob", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("subject")
        batch.drop_column("body")


def downgrade() -> None:
    with op.batch_alter_table("dev_outbox") as batch:
        batch.add_column(sa.Column("subject", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("body", sa.Text(), nullable=True))
    _open_existing()
    with op.batch_alter_table("dev_outbox") as batch:
        batch.alter_column("body", existing_type=sa.Text(), nullable=False)
        batch.drop_column("content_blob")
        batch.drop_column("content_key_id")
