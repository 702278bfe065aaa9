"""queue_counts: how many wait per SKU and priority rank, kept by triggers on subscriptions

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 21:00:00.000000

A new subscription's place in its queue was a count of every queued subscription of the SKU
ahead of it, in its INSERT's RETURNING: a scan that grew with the queue (0.3 ms for 944
waiting on a vacuumed table, 1.3 ms on rows written since the last vacuum, tens of
milliseconds at 100,000). The counts now sit beside the queue, per SKU and priority rank, so
the place is a sum over a few rows.

The database keeps them, at every entry to and exit from the queue (``status`` becoming or
leaving ``waiting``/``notified``), whichever statement makes it: the subscribe INSERT, a
confirmation, a withdrawal, an unsubscribe, an expiry, a conversion, a deletion, a bulk
seed. A restock's ``waiting`` -> ``notified`` stays in the queue and fires nothing.

- PostgreSQL: an INSERT or DELETE adds or removes its rows once per SKU and rank (a
  statement-level trigger over the transition table: a thousand-row insert changes a count
  once, not a thousand times); an UPDATE that moves a row into or out of the queue, a
  row-level trigger whose WHEN clause skips every other row. A SKU's rank may have several
  count rows (slots), summed: a change goes to the first one no other transaction holds,
  or to a new one when all are held, so no transaction ever waits for a count (two orders
  converting shoppers of the same two products in opposite orders would otherwise wait for
  each other); slots appear only while writers overlap.
- SQLite (one writer at a time): row-level triggers, everything in slot 0.

A later migration that rebuilds ``subscriptions`` on SQLite (a batch operation) drops its
triggers and must create them again.
"""

# ruff: noqa: S608 - every piece of SQL here is built from this file's constants, never input
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_QUEUE = "('waiting', 'notified')"
COUNT_KEY = "(sku, priority_rank, slot)"
TRIGGERS = ("subscriptions_enter_queue", "subscriptions_leave_queue", "subscriptions_move_in_queue")
FUNCTIONS = ("queue_counts_entered", "queue_counts_left", "queue_counts_moved")


def _grouped(function: str, rows: str, delta: str) -> str:
    """A statement-level trigger's function: the statement's rows (its transition table
    ``rows``) counted once per SKU and rank."""
    return f"""
    CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        g record;
    BEGIN
        FOR g IN SELECT sku, priority_rank, count(*)::integer AS n FROM {rows}
                 WHERE status IN {IN_QUEUE} GROUP BY 1, 2 LOOP
            PERFORM queue_counts_add(g.sku, g.priority_rank, {delta});
        END LOOP;
        RETURN NULL;
    END $$
    """


POSTGRES = [
    # Adds to the first of the SKU's counts at that rank that no other transaction holds
    # (one this transaction holds is not skipped), or, when every one is held, to a new
    # one in a slot of its own: a count is never waited for, so no two transactions can wait
    # for each other through these rows, whatever order they move shoppers in.
    """
    CREATE FUNCTION queue_counts_add(p_sku text, p_rank smallint, p_delta integer)
    RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        free smallint;
    BEGIN
        LOOP
            SELECT slot INTO free FROM queue_counts
            WHERE sku = p_sku AND priority_rank = p_rank
            ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                UPDATE queue_counts SET waiting = waiting + p_delta
                WHERE sku = p_sku AND priority_rank = p_rank AND slot = free;
                RETURN;
            END IF;
            INSERT INTO queue_counts (sku, priority_rank, slot, waiting)
            VALUES (p_sku, p_rank, 1 + floor(random() * 32766)::smallint, p_delta)
            ON CONFLICT DO NOTHING;
            IF FOUND THEN
                RETURN;
            END IF;
        END LOOP;
    END $$
    """,
    _grouped("queue_counts_entered", "entered", "g.n"),
    _grouped("queue_counts_left", "gone", "-g.n"),
    f"""
    CREATE FUNCTION queue_counts_moved() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.status IN {IN_QUEUE} THEN
            PERFORM queue_counts_add(OLD.sku, OLD.priority_rank, -1);
        END IF;
        IF NEW.status IN {IN_QUEUE} THEN
            PERFORM queue_counts_add(NEW.sku, NEW.priority_rank, 1);
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER subscriptions_enter_queue AFTER INSERT ON subscriptions
    REFERENCING NEW TABLE AS entered FOR EACH STATEMENT
    EXECUTE FUNCTION queue_counts_entered()
    """,
    """
    CREATE TRIGGER subscriptions_leave_queue AFTER DELETE ON subscriptions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION queue_counts_left()
    """,
    f"""
    CREATE TRIGGER subscriptions_move_in_queue
    AFTER UPDATE OF status, sku, priority_rank ON subscriptions FOR EACH ROW
    WHEN ((OLD.status IN {IN_QUEUE}) <> (NEW.status IN {IN_QUEUE})
          OR (NEW.status IN {IN_QUEUE}
              AND (OLD.sku, OLD.priority_rank) IS DISTINCT FROM (NEW.sku, NEW.priority_rank)))
    EXECUTE FUNCTION queue_counts_moved()
    """,
]

_SQLITE_ADD = (
    "INSERT INTO queue_counts (sku, priority_rank, slot, waiting) "
    f"SELECT NEW.sku, NEW.priority_rank, 0, 1 WHERE NEW.status IN {IN_QUEUE} "
    f"ON CONFLICT {COUNT_KEY} DO UPDATE SET waiting = waiting + 1;"
)
_SQLITE_REMOVE = (
    f"UPDATE queue_counts SET waiting = waiting - 1 WHERE OLD.status IN {IN_QUEUE} "
    "AND sku = OLD.sku AND priority_rank = OLD.priority_rank AND slot = 0;"
)
SQLITE = [
    f"""
    CREATE TRIGGER subscriptions_enter_queue AFTER INSERT ON subscriptions
    WHEN NEW.status IN {IN_QUEUE}
    BEGIN {_SQLITE_ADD} END
    """,
    f"""
    CREATE TRIGGER subscriptions_leave_queue AFTER DELETE ON subscriptions
    WHEN OLD.status IN {IN_QUEUE}
    BEGIN {_SQLITE_REMOVE} END
    """,
    f"""
    CREATE TRIGGER subscriptions_move_in_queue
    AFTER UPDATE OF status, sku, priority_rank ON subscriptions
    WHEN (OLD.status IN {IN_QUEUE}) <> (NEW.status IN {IN_QUEUE})
         OR (NEW.status IN {IN_QUEUE}
             AND (OLD.sku <> NEW.sku OR OLD.priority_rank <> NEW.priority_rank))
    BEGIN {_SQLITE_REMOVE} {_SQLITE_ADD} END
    """,
]


def upgrade() -> None:
    op.create_table(
        "queue_counts",
        sa.Column("sku", sa.String(128), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("sku", "priority_rank", "slot", name=op.f("pk_queue_counts")),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES if postgres else SQLITE:
        op.execute(statement)
    # The queue as it stands (the triggers keep it from here; the migration's transaction
    # holds the table's writers back until both are in place).
    op.execute(
        "INSERT INTO queue_counts (sku, priority_rank, slot, waiting) "
        f"SELECT sku, priority_rank, 0, count(*) FROM subscriptions "
        f"WHERE status IN {IN_QUEUE} GROUP BY sku, priority_rank"
    )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}{' ON subscriptions' if postgres else ''}")
    if postgres:
        for function in FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
        op.execute("DROP FUNCTION IF EXISTS queue_counts_add(text, smallint, integer)")
    op.drop_table("queue_counts")
