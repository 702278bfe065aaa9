"""notifications: room on each page for a message's next versions (fillfactor 30, PostgreSQL)

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 09:30:00.000000

A message is written once by its wave, then updated three times while it is delivered:
claimed (``status``), marked in flight (``call_started_at``, which no index names) and
given its outcome. PostgreSQL writes a row's new version on the row's own page when the
page has room, and without touching any index (a HOT update) when, besides, no indexed
column changed. Revision 0010 left 15 % of each page free for the mark (fillfactor 85),
but the claim comes first and its new versions used up that room when a claim takes every
row of a page (as it does: a wave's rows lie in queue order and claims follow the queue),
so most marks moved to another page and wrote an entry in every one of the table's twelve
indexes. With 70 % of each new page free, a message's claimed and marked
versions stay on its page and the mark is a HOT update, even while older snapshots keep
the page from being pruned.

Measured: 2,000 rows claimed, marked and sent, one statement each: 639 of 6,000 updates
HOT at fillfactor 85 and 2,000 (every mark) at 30, the heap ending at 1.10 MB instead of
1.28 MB (versions no longer spill onto new pages). In a 20,000-shopper email wave
(bench/crash.py) the marks' statement read 408k buffers instead of 630-715k (fillfactor
50 was not enough there: the claim's version filled the room before the old one could be
pruned), and PostgreSQL's CPU for the wave fell from 5.5-6.4 s to 4.6 s. Only pages
written from now on are affected; no row is rewritten. SQLite has no such setting.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications SET (fillfactor = 30)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notifications RESET (fillfactor)")
