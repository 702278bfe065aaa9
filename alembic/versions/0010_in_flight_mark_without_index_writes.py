"""in flight: a claimed message's call start is a timestamp, not a status

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 12:00:00.000000

The journal marked every message ``inflight`` right before its provider call. ``status`` is
indexed (the work queue's index and two partial indexes name it), so each mark was a
non-HOT update: a new entry in every index of the table, per message. The mark becomes
``call_started_at`` on a row still ``sending``: no indexed column changes, and with room left
on each page (fillfactor 85, applied to pages written from now on) PostgreSQL writes it as a
HOT update. Rows already ``inflight`` become ``sending`` with the mark set, which means the
same thing; workers of the previous version may still write ``inflight`` during a rolling
deploy, and recovery still reads it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notifications",
        sa.Column("call_started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.execute(
        "UPDATE notifications SET status = 'sending', call_started_at = CURRENT_TIMESTAMP "
        "WHERE status = 'inflight'"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications RESET (fillfactor)")
    op.execute(
        "UPDATE notifications SET status = 'inflight' "
        "WHERE status = 'sending' AND call_started_at IS NOT NULL"
    )
    # A plain DROP COLUMN on both backends (SQLite >= 3.35): a batch copy of the table would
    # trip the foreign keys other tables hold on it.
    op.execute("ALTER TABLE notifications DROP COLUMN call_started_at")
