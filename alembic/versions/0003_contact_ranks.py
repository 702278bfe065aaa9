"""contact ranks for fallbacks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 23:48:50.192798
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notifications", sa.Column("contact_rank", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "subscriptions", sa.Column("contact_failed_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("subscriptions", "contact_failed_at")
    op.drop_column("notifications", "contact_rank")
