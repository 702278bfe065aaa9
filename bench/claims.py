"""What a claim costs PostgreSQL: under a locking select, by key alone, or as a HOT update.

A wave's message is claimed (``status`` pending -> sending, with the claim's id, its lease
and one more attempt), then recorded (sending -> sent). ``status`` is in three of the
table's indexes, so the claim writes a new row version with an entry in every index, as
the result does. The alternative named in docs/architecture.md ("Where PostgreSQL's work
goes in a wave") leaves ``status`` alone at the claim (``claim_id``, ``lease_until`` and
``attempts`` only: no indexed column, so a HOT update) and tells a claimed row by its live
lease; the claims from the queue's head then step over rows claimed and not yet recorded.

``--compare direct`` instead sets the claim as locked before against the wake-up's claim as
the worker now writes it on PostgreSQL (``--shape key`` only): one ``UPDATE … WHERE id =
ANY(…) AND status = 'pending'`` whose update takes the row locks, with no ``SELECT … FOR
UPDATE SKIP LOCKED`` below it.

Both are run here on the schema as migrated, in alternating rounds on a fresh copy of the
same pending messages, claims of 200 each followed by its result (sent, by id), until every
message is sent: by key (``--shape key``, a wake-up's claim as dispatch/service.py wrote
it before it became one UPDATE), from the queue's head (``--shape head``, a drain's), or
from past the last row claimed (``--shape watermark``: a drain that remembers where it
stopped, with ``id`` added to the work index so the bound is the index's own). Reported: wall
time and WAL written (``pg_current_wal_lsn``), per message. The statements alone, from one
connection: a wave's other costs (writing it, sending, the subscription's update) are the
same either way.

    .venv/bin/python bench/claims.py --messages 100000 --rounds 3 --shape key --write
    .venv/bin/python bench/claims.py --messages 100000 --rounds 3 --shape head --write
    .venv/bin/python bench/claims.py --messages 100000 --rounds 3 --shape watermark --write
    .venv/bin/python bench/claims.py --messages 100000 --rounds 5 --compare direct --write
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime

import psycopg2
from benchlib import PG, fresh_database, write_results

from backinstock import migrations

DATABASE = "backinstock_claims"
BATCH = 200

SEED = """
INSERT INTO subscriptions (id, sku, channel, contact_index, locale, priority, priority_rank,
    status, notification_count, created_at, updated_at)
SELECT gen_random_uuid(), 'SKU-1', 'sms', sha256(('c-' || i)::bytea), 'zh-CN', 'standard', 1,
    'notified', 1, now(), now()
FROM generate_series(1, %(n)s) AS i;
INSERT INTO notifications (id, subscription_id, sku, kind, step, level, queue_size, status,
    attempts, next_attempt_at, created_at, channel)
SELECT gen_random_uuid(), id, 'SKU-1', 'restock', 1, %(n)s, %(n)s, 'pending', 0,
    now() - interval '1 second', now(), 'sms'
FROM subscriptions;
"""
RESET = (
    "UPDATE notifications SET status = 'pending', claim_id = NULL, lease_until = NULL, "
    "attempts = 0, sent_at = NULL"
)
HEAD = "WHERE status = 'pending' AND next_attempt_at <= now() {live} ORDER BY next_attempt_at, id"
# A wake-up's claim names its messages (dispatch/service.py's _named_due: the status tested
# in a form no index serves, the key the only way in); a drain's takes the queue's head.
DUE = {
    "key": "WHERE id = ANY(%(ids)s::uuid[]) AND (status = 'pending') IS TRUE "
    "AND next_attempt_at <= now() {live}",
    "head": HEAD,
    # A drain that starts past the last row it claimed (needs id in the index: WATERMARK_INDEX).
    "watermark": "WHERE status = 'pending' AND next_attempt_at <= now() {live} "
    "AND (next_attempt_at, id) > (%(after_t)s, %(after_id)s::uuid) ORDER BY next_attempt_at, id",
}
WATERMARK_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_notifications_work_id ON notifications "
    "(status, next_attempt_at, id)"
)
LIVE = {"status": "", "hot": "AND (lease_until IS NULL OR lease_until < now())"}
# The status claim is the worker's (a non-HOT update); the HOT claim changes no indexed
# column, and a live lease marks the row taken.
SET = {
    "status": "status = 'sending', claim_id = %(claim)s, "
    "lease_until = now() + interval '15 seconds', call_started_at = NULL, attempts = attempts + 1",
    "hot": "claim_id = %(claim)s, lease_until = now() + interval '15 seconds', "
    "call_started_at = NULL, attempts = attempts + 1",
}


def claim_statement(claim: str, shape: str) -> str:
    if claim == "direct":  # the wake-up's claim by key, locked by the update alone
        return (
            f"UPDATE notifications SET {SET['status']} "
            f"{DUE['key'].format(live='')} RETURNING id, next_attempt_at"
        )
    due = DUE[shape].format(live=LIVE[claim])
    return (
        f"UPDATE notifications SET {SET[claim]} WHERE id IN (SELECT id FROM notifications "
        f"{due} LIMIT %(batch)s FOR UPDATE SKIP LOCKED) RETURNING id, next_attempt_at"
    )


COMPARED = {"hot": ("status", "hot"), "direct": ("status", "direct")}
SHAPES = {
    "key": "by key, as a wake-up names them",
    "head": "from the queue's head, a drain's",
    "watermark": "from past the last row claimed, a drain with a watermark; id in the index",
}
RESULT = (
    "UPDATE notifications SET status = 'sent', sent_at = now(), lease_until = NULL "
    "WHERE id = ANY(%(ids)s::uuid[]) AND claim_id = %(claim)s"
)


def wal_bytes(cur: psycopg2.extensions.cursor) -> int:
    cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def one_round(
    conn: psycopg2.extensions.connection, claim: str, shape: str, n: int
) -> dict[str, float]:
    with conn.cursor() as cur:
        cur.execute(RESET)
        conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE notifications")
    conn.autocommit = False
    with conn.cursor() as cur:
        cur.execute("SELECT id::text FROM notifications ORDER BY id")
        named = [row[0] for row in cur.fetchall()]  # what the wave's wake-ups name, in order
        statement = claim_statement(claim, shape)
        wal, start, sent = wal_bytes(cur), time.perf_counter(), 0
        after: dict[str, object] = {"after_t": "-infinity", "after_id": str(uuid.UUID(int=0))}
        while sent < n:
            claim_id = str(uuid.uuid4())
            wake_up = named[sent : sent + BATCH]
            cur.execute(statement, {"claim": claim_id, "batch": BATCH, "ids": wake_up, **after})
            rows = cur.fetchall()
            ids = [str(row[0]) for row in rows]
            if rows:
                last = max((row[1], str(row[0])) for row in rows)
                after = {"after_t": last[0], "after_id": last[1]}
            conn.commit()
            if not ids:
                raise SystemExit(f"{claim}: nothing claimed with {n - sent} unsent")
            cur.execute(RESULT, {"ids": ids, "claim": claim_id})
            conn.commit()
            sent += len(ids)
        seconds = time.perf_counter() - start
        wal = wal_bytes(cur) - wal
    return {"us_per_msg": 1e6 * seconds / n, "wal_per_msg": wal / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", choices=sorted(DUE), default="key", help="whose claims")
    parser.add_argument(
        "--compare",
        choices=sorted(COMPARED),
        default="hot",
        help="the status claim against: a HOT claim, or the claim by key without SKIP LOCKED",
    )
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args()
    if args.compare == "direct" and args.shape != "key":
        parser.error("--compare direct is a wake-up's claim: --shape key")
    claims = COMPARED[args.compare]
    pg = fresh_database(DATABASE)
    migrations.upgrade(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}")
    conn = psycopg2.connect(dbname=DATABASE, **PG)
    with conn.cursor() as cur:
        cur.execute(SEED, {"n": args.messages})
        if args.shape == "watermark":
            cur.execute(WATERMARK_INDEX)
    conn.commit()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in claims}
    for r in range(args.rounds):
        for name in claims if r % 2 == 0 else claims[::-1]:
            runs[name].append(one_round(conn, name, args.shape, args.messages))
            got = runs[name][-1]
            print(f"round {r + 1} {name:>6}: {got['us_per_msg']:.1f} us/msg, "
                  f"{got['wal_per_msg']:.0f} B WAL/msg", flush=True)  # fmt: skip
    conn.close()
    lines = ["| claim | round | µs / message (claim + result) | WAL bytes / message |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for name, rounds in runs.items():
        for r, got in enumerate(rounds, 1):
            lines.append(f"| {name} | {r} | {got['us_per_msg']:.1f} | {got['wal_per_msg']:.0f} |")
    med = {n: {k: statistics.median(g[k] for g in rs) for k in rs[0]} for n, rs in runs.items()}
    for name, got in med.items():
        lines.append(f"| {name} | median | **{got['us_per_msg']:.1f}** | "
                     f"**{got['wal_per_msg']:.0f}** |")  # fmt: skip
    other = claims[1]
    ratio = med[other]["us_per_msg"] / med["status"]["us_per_msg"]
    label = {"hot": "HOT claim", "direct": "claim by key without SKIP LOCKED"}[other]
    summary = f"{label} / status claim: {ratio:.2f}x the time, " + (
        f"{med[other]['wal_per_msg'] / med['status']['wal_per_msg']:.2f}x the WAL"
    )
    print("\n".join(lines) + "\n" + summary)
    if args.write:
        now = datetime.now(UTC)
        write_results("\n".join([
            f"## {now:%Y-%m-%d} — a claim and its result: the status claim against "
            f"{'a HOT update' if other == 'hot' else 'the claim by key without SKIP LOCKED'}"
            " (PostgreSQL)", "",
            f"- command: `.venv/bin/python bench/claims.py --messages {args.messages} "
            f"--rounds {args.rounds} --shape {args.shape} --compare {args.compare} --write`",
            f"- date: {now:%Y-%m-%d %H:%M} UTC; PostgreSQL {pg['server_version']} "
            f"(synchronous_commit={pg['synchronous_commit']}); one connection, claims of "
            f"{BATCH} ({SHAPES[args.shape]}), each followed by its result; rounds alternate",
            "", *lines, "", summary, "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
