"""ix_notifications_work ends with the id: a drain starts past the last message it claimed

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 22:30:00.000000

A drain's claim took the due messages from the head of ``(status, next_attempt_at)``,
where every message claimed before had left a dead entry, walked by every later drain
until VACUUM. Drains now start past ``(next_attempt_at, id)`` of the last message their
process claimed (``dispatch.service._DrainMark``); with the id in the index that bound is
the index's own. The index is rebuilt (writes to ``notifications`` wait for it).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_notifications_work", table_name="notifications")
    op.create_index("ix_notifications_work", "notifications", ["status", "next_attempt_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_work", table_name="notifications")
    op.create_index("ix_notifications_work", "notifications", ["status", "next_attempt_at"])
