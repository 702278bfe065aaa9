"""clicks, orders and conversions, coupon pools and coupons, follow-up bookkeeping

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 01:38:38.599152
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOLLOWUP_PENDING = "kind = 'restock' AND status = 'sent' AND followed_up_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "coupon_pools",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=True),
        sa.Column("description", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_pools")),
        sa.UniqueConstraint("name", name=op.f("uq_coupon_pools_name")),
    )
    op.create_index(op.f("ix_coupon_pools_sku"), "coupon_pools", ["sku"], unique=False)
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("order_id", name=op.f("uq_orders_order_id")),
    )
    op.create_table(
        "conversions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_pk", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("revenue", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("converted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_conversions_notification_id_notifications"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["order_pk"],
            ["orders.id"],
            name=op.f("fk_conversions_order_pk_orders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_conversions_subscription_id_subscriptions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversions")),
        sa.UniqueConstraint("order_pk", "sku", name=op.f("uq_conversions_order_pk_sku")),
    )
    op.create_index("ix_conversions_converted_at", "conversions", ["converted_at"], unique=False)
    op.create_index(
        "ix_conversions_sku_converted_at", "conversions", ["sku", "converted_at"], unique=False
    )
    op.create_index(
        op.f("ix_conversions_subscription_id"), "conversions", ["subscription_id"], unique=False
    )
    op.create_table(
        "coupons",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("pool_id", sa.Uuid(), nullable=True),
        sa.Column("subscription_id", sa.Uuid(), nullable=True),
        sa.Column("notification_id", sa.Uuid(), nullable=True),
        sa.Column("sku", sa.String(length=128), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notifications.id"],
            name=op.f("fk_coupons_notification_id_notifications"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_coupons_order_id_orders"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["pool_id"],
            ["coupon_pools.id"],
            name=op.f("fk_coupons_pool_id_coupon_pools"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_coupons_subscription_id_subscriptions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
        sa.UniqueConstraint("code", name=op.f("uq_coupons_code")),
        sa.UniqueConstraint("subscription_id", name=op.f("uq_coupons_subscription_id")),
    )
    op.create_index(
        "ix_coupons_available",
        "coupons",
        ["pool_id", "id"],
        unique=False,
        postgresql_where=sa.text("issued_at IS NULL"),
        sqlite_where=sa.text("issued_at IS NULL"),
    )
    op.create_index("ix_coupons_issued_at", "coupons", ["issued_at"], unique=False)
    op.create_index("ix_coupons_redeemed_at", "coupons", ["redeemed_at"], unique=False)
    # SQLite cannot alter constraints in place: batch mode rebuilds the table there.
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), server_default="restock", nullable=False)
        )
        batch.add_column(sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("click_count", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("followed_up_at", sa.DateTime(timezone=True), nullable=True))
        batch.drop_constraint("uq_notifications_subscription_id_wave_id", type_="unique")
        batch.create_unique_constraint(
            "uq_notifications_subscription_id_wave_id_kind", ["subscription_id", "wave_id", "kind"]
        )
    op.create_index(
        "ix_notifications_followup_due",
        "notifications",
        ["sent_at"],
        unique=False,
        postgresql_where=sa.text(FOLLOWUP_PENDING),
        sqlite_where=sa.text(FOLLOWUP_PENDING),
    )
    op.create_index("ix_notifications_sent_at", "notifications", ["sent_at"], unique=False)
    op.create_index(
        "ix_notifications_sku_sent_at", "notifications", ["sku", "sent_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_sku_sent_at", table_name="notifications")
    op.drop_index("ix_notifications_sent_at", table_name="notifications")
    op.drop_index("ix_notifications_followup_due", table_name="notifications")
    op.execute("DELETE FROM notifications WHERE kind <> 'restock'")
    with op.batch_alter_table("notifications") as batch:
        batch.drop_constraint("uq_notifications_subscription_id_wave_id_kind", type_="unique")
        batch.create_unique_constraint(
            "uq_notifications_subscription_id_wave_id", ["subscription_id", "wave_id"]
        )
        batch.drop_column("followed_up_at")
        batch.drop_column("click_count")
        batch.drop_column("clicked_at")
        batch.drop_column("kind")
    op.drop_index("ix_coupons_redeemed_at", table_name="coupons")
    op.drop_index("ix_coupons_issued_at", table_name="coupons")
    op.drop_index(
        "ix_coupons_available",
        table_name="coupons",
        postgresql_where=sa.text("issued_at IS NULL"),
        sqlite_where=sa.text("issued_at IS NULL"),
    )
    op.drop_table("coupons")
    op.drop_index(op.f("ix_conversions_subscription_id"), table_name="conversions")
    op.drop_index("ix_conversions_sku_converted_at", table_name="conversions")
    op.drop_index("ix_conversions_converted_at", table_name="conversions")
    op.drop_table("conversions")
    op.drop_table("orders")
    op.drop_index(op.f("ix_coupon_pools_sku"), table_name="coupon_pools")
    op.drop_table("coupon_pools")
