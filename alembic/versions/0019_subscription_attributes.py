"""subscription attributes: a small map of non-identifying values, and its segment

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 00:45:00.000000

``subscriptions.attributes`` (JSON) holds what the subscribe request's ``attributes`` held
(NULL when none); ``subscriptions.segment`` repeats its ``segment`` value in a column of its
own, indexed, so that every figure filters and groups by it without reading JSON (the
JSON operators of PostgreSQL and SQLite differ). Both nullable without a default, so adding
them rewrites no rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscriptions", sa.Column("attributes", sa.JSON(), nullable=True))
    op.add_column("subscriptions", sa.Column("segment", sa.String(length=64), nullable=True))
    op.create_index("ix_subscriptions_segment", "subscriptions", ["segment"])


def downgrade() -> None:
    # Plain DROP COLUMNs (SQLite 3.35+): a batch copy would drop the table that
    # subscription_fallbacks, notifications and others reference.
    op.drop_index("ix_subscriptions_segment", table_name="subscriptions")
    op.drop_column("subscriptions", "segment")
    op.drop_column("subscriptions", "attributes")
