"""product substitutes: alternatives named to shoppers while a product is sold out

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 23:00:00.000000

A product lists up to 10 substitute SKUs in order (``PUT /v1/products/{sku}/substitutes``).
While the product is sold out, the subscribe answer and the shopper's page name those in
stock. The primary key (sku, position) is the look-up: one SKU's list, in its order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "product_substitutes",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("substitute_sku", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["products.sku"],
            name=op.f("fk_product_substitutes_sku_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", "position", name=op.f("pk_product_substitutes")),
        sa.UniqueConstraint(
            "sku", "substitute_sku", name=op.f("uq_product_substitutes_sku_substitute_sku")
        ),
    )


def downgrade() -> None:
    op.drop_table("product_substitutes")
