"""subscriptions, api keys, products

Revision ID: 0001
Revises:
Create Date: 2026-11-21 22:40:47.048490
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    op.create_table(
        "products",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("url", sa.String(length=2048), nullable=True),
        sa.Column("image_url", sa.String(length=2048), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_products")),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("contact_key_id", sa.String(length=32), nullable=True),
        sa.Column("contact_blob", sa.LargeBinary(), nullable=True),
        sa.Column("contact_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("profile_key_id", sa.String(length=32), nullable=True),
        sa.Column("profile_blob", sa.LargeBinary(), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.String(length=128), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("consent_text_version", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("notification_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    op.create_index(
        "ix_subscriptions_contact_index", "subscriptions", ["contact_index"], unique=False
    )
    op.create_index("ix_subscriptions_customer_id", "subscriptions", ["customer_id"], unique=False)
    op.create_index(
        "ix_subscriptions_queue",
        "subscriptions",
        ["sku", "priority_rank", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("status IN ('waiting', 'notified')"),
        sqlite_where=sa.text("status IN ('waiting', 'notified')"),
    )
    op.create_index(
        "uq_subscriptions_waiting_contact",
        "subscriptions",
        ["sku", "contact_index"],
        unique=True,
        postgresql_where=sa.text("status IN ('waiting', 'notified')"),
        sqlite_where=sa.text("status IN ('waiting', 'notified')"),
    )
    op.create_table(
        "subscription_fallbacks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("subscription_id", sa.Uuid(), nullable=False),
        sa.Column("rank", sa.SmallInteger(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("contact_key_id", sa.String(length=32), nullable=True),
        sa.Column("contact_blob", sa.LargeBinary(), nullable=True),
        sa.Column("contact_index", sa.LargeBinary(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["subscriptions.id"],
            name=op.f("fk_subscription_fallbacks_subscription_id_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_fallbacks")),
    )
    op.create_index(
        "ix_subscription_fallbacks_contact_index",
        "subscription_fallbacks",
        ["contact_index"],
        unique=False,
    )
    op.create_index(
        op.f("ix_subscription_fallbacks_subscription_id"),
        "subscription_fallbacks",
        ["subscription_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_subscription_fallbacks_subscription_id"), table_name="subscription_fallbacks"
    )
    op.drop_index("ix_subscription_fallbacks_contact_index", table_name="subscription_fallbacks")
    op.drop_table("subscription_fallbacks")
    op.drop_index(
        "uq_subscriptions_waiting_contact",
        table_name="subscriptions",
        postgresql_where=sa.text("status IN ('waiting', 'notified')"),
        sqlite_where=sa.text("status IN ('waiting', 'notified')"),
    )
    op.drop_index(
        "ix_subscriptions_queue",
        table_name="subscriptions",
        postgresql_where=sa.text("status IN ('waiting', 'notified')"),
        sqlite_where=sa.text("status IN ('waiting', 'notified')"),
    )
    op.drop_index("ix_subscriptions_customer_id", table_name="subscriptions")
    op.drop_index("ix_subscriptions_contact_index", table_name="subscriptions")
    op.drop_table("subscriptions")
    op.drop_table("products")
    op.drop_table("api_keys")
