"""notifications: the wave a message belongs to is no longer a checked foreign key

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07 20:30:00.000000

``notifications.wave_id`` referenced ``waves.id`` with ``ON DELETE CASCADE``. A wave's
writer inserts each chunk's messages (8,000 rows) with the id of the wave it is running,
whose row it holds under the wave's lease, and no code deletes a wave, so neither the check
nor the cascade ever had anything to do; yet PostgreSQL ran the check once a row, a query
of ``waves`` each time: 20 ms of a chunk's 150 ms INSERT, and again on each row a claim
updates a second time in its transaction (PostgreSQL re-checks the keys of a row the
transaction itself wrote). The column stays, with the wave progress index on it.

PostgreSQL only: on SQLite dropping a constraint rebuilds the table, which fires the
foreign keys other tables hold on ``notifications`` (revision 0013), for a check that
costs little there; its databases keep the constraint.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "fk_notifications_wave_id_waves"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgresql():
        op.drop_constraint(CONSTRAINT, "notifications", type_="foreignkey")


def downgrade() -> None:
    # NOT VALID: rows written meanwhile are not checked now (the application names only
    # waves that exist), so going back never fails on a row written outside it; new rows
    # are checked, and ``VALIDATE CONSTRAINT`` checks the rest when wanted.
    if _postgresql():
        op.execute(
            f"ALTER TABLE notifications ADD CONSTRAINT {CONSTRAINT} FOREIGN KEY (wave_id) "
            "REFERENCES waves (id) ON DELETE CASCADE NOT VALID"
        )
