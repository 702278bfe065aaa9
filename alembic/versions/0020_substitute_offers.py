"""substitute messages: what each one offered, and the orders they saved

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 00:40:00.000000

``substitute_offers`` (owned by dispatch): the substitutes a ``substitute`` message names,
by their place in it, with their links' clicks. ``substitute_sales`` (owned by
conversions): orders of an offered substitute that carried the message's token ("saved by
a substitute"). ``uq_notifications_one_substitute``: one substitute message per
subscription, ever (the unique (subscription, wave, kind) key does not hold where wave_id
is NULL). ``product_policies.substitute_after_seconds`` overrides the setting for one SKU
(NULL keeps it). New tables, a nullable column without a default and an index on a kind
no row has yet: nothing is rewritten.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_SUBSTITUTE = "kind = 'substitute'"
CLICKED = "clicked_at IS NOT NULL"


def upgrade() -> None:
    op.add_column(
        "product_policies", sa.Column("substitute_after_seconds", sa.Integer(), nullable=True)
    )
    op.create_index(
        "uq_notifications_one_substitute",
        "notifications",
        ["subscription_id"],
        unique=True,
        postgresql_where=sa.text(ONE_SUBSTITUTE),
        sqlite_where=sa.text(ONE_SUBSTITUTE),
    )
    _offers()
    _sales()


def _offers() -> None:
    op.create_table(
        "substitute_offers",
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("substitute_sku", sa.String(length=128), nullable=False),
        sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("click_count", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_substitute_offers_notification_id_notifications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("notification_id", "position", name=op.f("pk_substitute_offers")),
    )
    op.create_index(
        "ix_substitute_offers_clicked_at",
        "substitute_offers",
        ["clicked_at"],
        unique=False,
        postgresql_where=sa.text(CLICKED),
        sqlite_where=sa.text(CLICKED),
    )


def _sales() -> None:
    op.create_table(
        "substitute_sales",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_pk", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("substitute_sku", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("revenue", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_pk"],
            ["orders.id"],
            name=op.f("fk_substitute_sales_order_pk_orders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_substitute_sales_subscription_id_subscriptions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_substitute_sales_notification_id_notifications"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_substitute_sales")),
        sa.UniqueConstraint(
            "order_pk", "substitute_sku", name=op.f("uq_substitute_sales_order_pk_substitute_sku")
        ),
    )
    op.create_index("ix_substitute_sales_saved_at", "substitute_sales", ["saved_at"])
    op.create_index("ix_substitute_sales_sku_saved_at", "substitute_sales", ["sku", "saved_at"])


def downgrade() -> None:
    op.drop_table("substitute_sales")
    op.drop_table("substitute_offers")
    op.drop_index("uq_notifications_one_substitute", table_name="notifications")
    with op.batch_alter_table("product_policies") as batch:
        batch.drop_column("substitute_after_seconds")
