"""product names per locale: a message names the product in its shopper's language

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 09:00:00.000000

``products.name`` was overwritten by every subscription that carried a name, so a zh-CN
shopper's SMS could name the product in English. Names are now kept per locale
(``product_names``); ``products.name`` stays as the SKU's default name. Names stored before
this revision have no known locale and stay the default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "product_names",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("locale", sa.String(length=35), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["products.sku"],
            name=op.f("fk_product_names_sku_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", "locale", name=op.f("pk_product_names")),
    )


def downgrade() -> None:
    op.drop_table("product_names")
