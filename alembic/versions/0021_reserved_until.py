"""held stock: the time until which a restock message says its unit is reserved

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 01:00:00.000000

``notifications.held_until`` is set on a restock message a wave step plans while the SKU
holds stock for the shoppers it tells (``HOLD_SECONDS`` or the SKU's ``hold_seconds``):
the message says "reserved for you until …", and the message's hold (``holds.until``) is
copied from it in the same transaction. NULL for every other message. Nullable without a
default, so adding it rewrites no rows.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notifications", sa.Column("held_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+): a batch copy would drop the table that
    # dev_outbox and holds reference, and their rows with it.
    op.drop_column("notifications", "held_until")
