"""retention: index the subscriptions that may expire and those whose contact is to be erased

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 02:05:00.000000

Every worker looks for both about once a minute; partial indexes keep that to the few rows
concerned instead of a scan of every subscription.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXPIRY_CANDIDATE = "status = 'notified'"
ERASURE_CANDIDATE = (
    "contact_blob IS NOT NULL AND status IN ('converted', 'unsubscribed', 'expired')"
)


def upgrade() -> None:
    op.create_index(
        "ix_subscriptions_expiry",
        "subscriptions",
        ["last_notified_at"],
        unique=False,
        postgresql_where=sa.text(EXPIRY_CANDIDATE),
        sqlite_where=sa.text(EXPIRY_CANDIDATE),
    )
    op.create_index(
        "ix_subscriptions_erasure",
        "subscriptions",
        ["stopped_at"],
        unique=False,
        postgresql_where=sa.text(ERASURE_CANDIDATE),
        sqlite_where=sa.text(ERASURE_CANDIDATE),
    )


def downgrade() -> None:
    op.drop_index("ix_subscriptions_erasure", table_name="subscriptions")
    op.drop_index("ix_subscriptions_expiry", table_name="subscriptions")
