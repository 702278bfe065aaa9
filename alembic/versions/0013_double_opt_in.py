"""double opt-in: pending subscriptions, confirmation messages, one a day per SKU and contact

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 11:00:00.000000

- A subscription may be ``pending`` until its shopper confirms (``confirmed_at`` records
  when). One pending or waiting subscription per SKU and contact: the unique index that
  dedupes subscriptions now covers ``pending`` too (``uq_subscriptions_active_contact``
  replaces ``uq_subscriptions_waiting_contact``), and unconfirmed requests are found by
  ``ix_subscriptions_unconfirmed`` to be erased once their window has passed.
- A confirmation message is a notification of kind ``confirmation`` in no wave:
  ``notifications.wave_id`` becomes nullable. On SQLite a NOT NULL constraint can only be
  dropped by rebuilding the table, and dropping ``notifications`` for the rebuild would fire
  the foreign keys other tables hold on it (the dev outbox's rows would be deleted with it),
  while ``PRAGMA foreign_keys`` cannot change inside the migration's transaction. So the
  column's declaration is edited in place, the procedure SQLite documents for removing a
  NOT NULL constraint (https://www.sqlite.org/lang_altertable.html, "Making Other Kinds Of
  Table Schema Changes"): no row is rewritten and no index is touched.
- ``confirmations_sent`` remembers, per SKU and contact (blind index), when the last
  confirmation went: at most one a day.
"""

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = sa.text("status IN ('waiting', 'notified')")
ACTIVE = sa.text("status IN ('pending', 'waiting', 'notified')")
UNCONFIRMED = sa.text("status = 'pending'")


def upgrade() -> None:
    op.add_column(
        "subscriptions", sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "uq_subscriptions_active_contact",
        "subscriptions",
        ["sku", "contact_index"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.drop_index(
        "uq_subscriptions_waiting_contact",
        table_name="subscriptions",
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.create_index(
        "ix_subscriptions_unconfirmed",
        "subscriptions",
        ["created_at"],
        postgresql_where=UNCONFIRMED,
        sqlite_where=UNCONFIRMED,
    )
    _wave_id_nullable(True)
    op.create_table(
        "confirmations_sent",
        sa.Column("sku", sa.String(length=128), nullable=False),
        sa.Column("contact_index", sa.LargeBinary(length=32), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", "contact_index", name=op.f("pk_confirmations_sent")),
    )
    op.create_index(
        op.f("ix_confirmations_sent_sent_at"), "confirmations_sent", ["sent_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_confirmations_sent_sent_at"), table_name="confirmations_sent")
    op.drop_table("confirmations_sent")
    # Confirmation messages and unconfirmed requests have no place in the older schema.
    op.execute("DELETE FROM notifications WHERE wave_id IS NULL")
    op.execute(
        "DELETE FROM subscription_fallbacks WHERE subscription_id IN "
        "(SELECT id FROM subscriptions WHERE status = 'pending')"
    )
    op.execute("DELETE FROM subscriptions WHERE status = 'pending'")
    _wave_id_nullable(False)
    op.drop_index(
        "ix_subscriptions_unconfirmed",
        table_name="subscriptions",
        postgresql_where=UNCONFIRMED,
        sqlite_where=UNCONFIRMED,
    )
    op.create_index(
        "uq_subscriptions_waiting_contact",
        "subscriptions",
        ["sku", "contact_index"],
        unique=True,
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )
    op.drop_index(
        "uq_subscriptions_active_contact",
        table_name="subscriptions",
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.execute("ALTER TABLE subscriptions DROP COLUMN confirmed_at")


def _wave_id_nullable(nullable: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.alter_column("notifications", "wave_id", existing_type=sa.Uuid(), nullable=nullable)
        return
    # SQLite: edit the declaration of the column in the table's CREATE statement (see the
    # docstring). Going back is safe only because no NULL is left (deleted above).
    declared = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'notifications'"
    ).scalar_one()
    pattern = r"\bwave_id CHAR\(32\)( NOT NULL)?"
    if len(re.findall(pattern, declared)) != 1:
        raise RuntimeError("notifications.wave_id is not declared as this revision expects")
    changed = re.sub(pattern, "wave_id CHAR(32)" + ("" if nullable else " NOT NULL"), declared)
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'notifications'",
            (changed,),
        )
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    problems = bind.exec_driver_sql("PRAGMA quick_check").scalars().all()
    if problems != ["ok"]:
        raise RuntimeError(f"SQLite quick check after the change: {problems}")
