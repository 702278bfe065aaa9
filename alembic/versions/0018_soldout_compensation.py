"""sold-out compensation: a SKU's own rule and the place in line a message states

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 23:30:00.000000

``product_policies.soldout_compensation`` overrides ``SOLDOUT_COMPENSATION`` for one SKU
(NULL keeps the setting). ``notifications.place`` is the shopper's place in the SKU's queue
when a "sold out again" message was planned (NULL for every other kind): the message states
it. Both nullable without a default, so adding them rewrites no rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "product_policies",
        sa.Column("soldout_compensation", sa.String(length=16), nullable=True),
    )
    op.add_column("notifications", sa.Column("place", sa.Integer(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy would drop the table that
    # dev_outbox and holds reference, and their rows with it.
    op.drop_column("notifications", "place")
    with op.batch_alter_table("product_policies") as batch:
        batch.drop_column("soldout_compensation")
