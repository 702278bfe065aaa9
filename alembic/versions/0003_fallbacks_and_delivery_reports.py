"""fallback contact ranks and provider delivery reports

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:01:20.826312
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
        "notifications", sa.Column("delivery_status", sa.String(length=16), nullable=True)
    )
    op.add_column(
        "notifications", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        op.f("ix_notifications_provider_id"), "notifications", ["provider_id"], unique=False
    )
    op.add_column(
        "subscriptions", sa.Column("contact_failed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "subscriptions",
        sa.Column("wechat_consents", sa.Integer(), server_default="1", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("subscriptions", "wechat_consents")
    op.drop_column("subscriptions", "contact_failed_at")
    op.drop_index(op.f("ix_notifications_provider_id"), table_name="notifications")
    op.drop_column("notifications", "delivered_at")
    op.drop_column("notifications", "delivery_status")
    op.drop_column("notifications", "contact_rank")
