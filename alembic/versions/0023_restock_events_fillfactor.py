"""restock_events: room on each page for an event's answer (fillfactor 45, PostgreSQL)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 15:00:00.000000

An event is inserted, then, in the same transaction, updated once with its answer
(``applied``, ``level_after``, ``waiting``, ``first_wave``: columns no index names). A
catalogue sync does that for up to 1,000 events while it holds its SKUs' locks. With full
pages the answer's version went to another page and wrote an entry in each of the table's
four indexes (20-45 ms of a sync request's locked time at 200,000 stored events, and the
indexes grew with every sync). With more than half of each new page free, both versions of
every event on the page fit on it and the answer is a HOT update. Only pages written from
now on are affected; no row is rewritten. SQLite has no such setting.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE restock_events SET (fillfactor = 45)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE restock_events RESET (fillfactor)")
