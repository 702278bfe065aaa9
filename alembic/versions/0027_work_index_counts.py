"""notifications: the work index carries the channel; the status-and-channel index goes

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 18:00:00.000000

A message's planned and claimed versions each took an entry in two indexes over the same
rows: ``ix_notifications_work`` (status, next_attempt_at; open messages), read by claims,
drains and the sweeper, and ``ix_notifications_status_channel`` (status, channel; open and
failed messages), read only by ``/metrics``' counts by status and channel. The work index
now takes the failed messages too and the channel as its last column, so the counts are an
index-only read of it, and the second index is dropped: 15 index entries a message instead
of 17. Failed messages sort apart from pending ones (the status leads), so claims and
drains read no more of the index than before.

The index is rebuilt in the migration's transaction, which holds the table's write lock
while it builds: on a large ``notifications`` table, run it in a quiet hour.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('pending', 'sending', 'inflight')"
OPEN_OR_FAILED = "status IN ('pending', 'sending', 'inflight', 'failed')"


def _index(name: str, columns: list[str], predicate: str) -> None:
    where = sa.text(predicate)
    op.create_index(name, "notifications", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    op.drop_index("ix_notifications_status_channel", table_name="notifications")
    op.drop_index("ix_notifications_work", table_name="notifications")
    _index("ix_notifications_work", ["status", "next_attempt_at", "channel"], OPEN_OR_FAILED)


def downgrade() -> None:
    op.drop_index("ix_notifications_work", table_name="notifications")
    _index("ix_notifications_work", ["status", "next_attempt_at"], OPEN)
    _index("ix_notifications_status_channel", ["status", "channel"], OPEN_OR_FAILED)
