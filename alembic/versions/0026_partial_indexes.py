"""notifications and subscriptions: indexes that leave out the rows nobody looks up in them

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 15:00:00.000000

A restock message is written three times while it is delivered (planned, claimed, given
its outcome), and the claim and the outcome change its status, so each of the three
versions gets an entry in every index whose predicate it meets; a shopper told is
written once more (status, counter). Four of the message's indexes held entries no query
reads: ``ix_notifications_work`` held every finished message (claims, drains and the
sweeper read only open ones), ``ix_notifications_sent_at`` and ``…_sku_sent_at`` the
planned and claimed versions with no ``sent_at`` (every reader compares ``sent_at``,
which a NULL never passes; ``max(sent_at)`` is planned as a scan of the non-NULL ones)
and ``ix_notifications_provider_id`` every version before the provider's answer (it is
looked up by equality). Likewise the shoppers' ``customer_id`` and ``segment``, NULL for
most of them. The same names, now partial: 17 index entries a message instead of 24, and
the shopper's update 2 fewer.

The indexes are rebuilt in the migration's transaction, which holds the tables' write
lock while they build: on a large ``notifications`` table, run it in a quiet hour.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('pending', 'sending', 'inflight')"

# (table, index, columns, the predicate it gets)
PARTIAL = (
    ("notifications", "ix_notifications_work", ["status", "next_attempt_at"], OPEN),
    ("notifications", "ix_notifications_sent_at", ["sent_at"], "sent_at IS NOT NULL"),
    ("notifications", "ix_notifications_sku_sent_at", ["sku", "sent_at"], "sent_at IS NOT NULL"),
    ("notifications", "ix_notifications_provider_id", ["provider_id"], "provider_id IS NOT NULL"),
    ("subscriptions", "ix_subscriptions_customer_id", ["customer_id"], "customer_id IS NOT NULL"),
    ("subscriptions", "ix_subscriptions_segment", ["segment"], "segment IS NOT NULL"),
)


def _rebuild(partial: bool) -> None:
    for table, name, columns, predicate in PARTIAL:
        where = sa.text(predicate) if partial else None
        op.drop_index(name, table_name=table)
        op.create_index(name, table, columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)
