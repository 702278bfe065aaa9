"""publishable keys: a browser-safe key kind with the origins it may be used from

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 10:00:00.000000

Every key so far was a secret key with scopes. A publishable key (``pk_…``) sits in a web
page: it has no scopes, only origins, and can create nothing but pending subscriptions.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_keys",
        sa.Column("kind", sa.String(length=16), server_default="secret", nullable=False),
    )
    op.add_column("api_keys", sa.Column("origins", sa.Text(), nullable=True))


def downgrade() -> None:
    # A publishable key has no scopes: without its kind it would be a key that can do
    # nothing, so it goes.
    op.execute("DELETE FROM api_keys WHERE kind = 'publishable'")
    # Plain DROP COLUMN on both backends (SQLite >= 3.35): no batch copy of the table, whose
    # rows dashboard sessions refer to.
    op.execute("ALTER TABLE api_keys DROP COLUMN origins")
    op.execute("ALTER TABLE api_keys DROP COLUMN kind")
