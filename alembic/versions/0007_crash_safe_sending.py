"""crash-safe sending: the claim that holds a message, and how a crash's doubt was settled

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 08:30:00.000000

``claim_id`` fences every write to a claimed message by the claim that holds it;
``in_doubt`` records that a crash left an attempt in flight and how it was settled. The
status column gains the value ``inflight`` (a provider call has started), which needs no
schema change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: a plain ADD COLUMN on both backends, no table rewrite.
    op.add_column("notifications", sa.Column("claim_id", sa.Uuid(), nullable=True))
    op.add_column("notifications", sa.Column("in_doubt", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_notifications_in_doubt",
        "notifications",
        ["in_doubt"],
        unique=False,
        postgresql_where=sa.text("in_doubt IS NOT NULL"),
        sqlite_where=sa.text("in_doubt IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_in_doubt", table_name="notifications")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("in_doubt")
        batch.drop_column("claim_id")
