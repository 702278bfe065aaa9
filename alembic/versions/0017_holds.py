"""holds: units kept for notified shoppers, and a product's own hold time

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 23:30:00.000000

Each restock message a wave step plans holds one unit for its shopper until ``until``
(planned at + ``HOLD_SECONDS``, or the SKU's ``hold_seconds``). A hold is ``held`` until
an order carrying the shopper's token consumes it, the SKU sells out (``ended``) or the
sweeper releases it once expired (``released``, and the wave's next step is due at once).
The partial indexes cover the live holds only: a SKU's held units, and the expired ones
the sweeper looks for.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = "state = 'held'"


def upgrade() -> None:
    op.add_column("product_policies", sa.Column("hold_seconds", sa.Integer(), nullable=True))
    op.create_table(
        "holds",
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("wave_id", sa.Uuid(), nullable=False),
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["wave_id"], ["waves.id"], name=op.f("fk_holds_wave_id_waves"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("notification_id", name=op.f("pk_holds")),
    )
    op.create_index(
        "ix_holds_held_sku",
        "holds",
        ["sku", "until"],
        unique=False,
        postgresql_where=sa.text(HELD),
        sqlite_where=sa.text(HELD),
    )
    op.create_index(
        "ix_holds_held_until",
        "holds",
        ["until"],
        unique=False,
        postgresql_where=sa.text(HELD),
        sqlite_where=sa.text(HELD),
    )
    op.create_index("ix_holds_wave", "holds", ["wave_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_holds_wave", table_name="holds")
    op.drop_index("ix_holds_held_until", table_name="holds")
    op.drop_index("ix_holds_held_sku", table_name="holds")
    op.drop_table("holds")
    with op.batch_alter_table("product_policies") as batch:
        batch.drop_column("hold_seconds")
