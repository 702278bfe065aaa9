"""waves.request_id: the request that opened the wave or last raised its level

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 00:00:00.000000

A wave's step runs on whichever wake-up reaches a worker first: the webhook's own (which
carries the request's id in its log context) or the sweeper's (which knows none). Kept on
the wave, the id reaches the step's log lines either way. Nullable: waves opened before
this revision have none (a step a hold's release makes due keeps the wave's id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("waves", sa.Column("request_id", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("waves", "request_id")
