"""indexes for the pipeline figures /metrics reads at scrape time

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 12:00:00.000000

The API's /metrics reads the delivery pipeline from the database (stats/pipeline.py), so
that one scrape sees every worker; each figure is an index look-up, not a table scan:

- notifications by status and channel (pending, sending, failed): a partial index of the
  open and failed rows only, so sent history (most of the table) is not in it and a sent
  message writes no entry to it; the counts are index-only scans;
- a wave's first and last message, and whether any of its messages is still open: the
  wave index gains status and sent_at (it stays the index for the wave's foreign key);
  every write that changes a message's status already writes an entry to each index;
- the last stock event of each location (a silent feed): (location, received_at), read by
  skipping from one location to the next.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_OR_FAILED = "status IN ('pending', 'sending', 'inflight', 'failed')"


def upgrade() -> None:
    op.create_index(
        "ix_notifications_status_channel",
        "notifications",
        ["status", "channel"],
        unique=False,
        postgresql_where=sa.text(OPEN_OR_FAILED),
        sqlite_where=sa.text(OPEN_OR_FAILED),
    )
    op.create_index(
        "ix_notifications_wave_progress",
        "notifications",
        ["wave_id", "status", "sent_at"],
        unique=False,
    )
    op.drop_index("ix_notifications_wave", table_name="notifications")
    op.create_index(
        "ix_restock_events_location_received",
        "restock_events",
        ["location", "received_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_restock_events_location_received", table_name="restock_events")
    op.create_index("ix_notifications_wave", "notifications", ["wave_id"], unique=False)
    op.drop_index("ix_notifications_wave_progress", table_name="notifications")
    op.drop_index(
        "ix_notifications_status_channel",
        table_name="notifications",
        postgresql_where=sa.text(OPEN_OR_FAILED),
        sqlite_where=sa.text(OPEN_OR_FAILED),
    )
