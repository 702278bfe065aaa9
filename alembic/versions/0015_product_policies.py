"""product policies: a SKU's own wave sizing, follow-up delay and channels

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 22:30:00.000000

``PUT /v1/products/{sku}/policy`` overrides settings per SKU: ``batch_multiplier``,
``batch_interval_seconds``, ``followup_after_seconds`` and the ``channels`` a subscription
to the SKU may use. One row per SKU that has ever had a policy; a NULL column keeps the
setting. No index beyond the primary key: steps and subscribes read one SKU's row, and the
follow-ups join it by SKU.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "product_policies",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("batch_multiplier", sa.Float(), nullable=True),
        sa.Column("batch_interval_seconds", sa.Float(), nullable=True),
        sa.Column("followup_after_seconds", sa.Integer(), nullable=True),
        sa.Column("channels", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["products.sku"],
            name=op.f("fk_product_policies_sku_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_product_policies")),
    )


def downgrade() -> None:
    op.drop_table("product_policies")
