"""The subscribe hot path's SQL, built once.

Building a Core statement per request (``insert().values(...)``) costs more CPU than the
database round trip itself; these textual statements with typed parameters compile once
and run unchanged on PostgreSQL and SQLite (both know partial-index ON CONFLICT, RETURNING
with a subquery, and row-value comparison).
"""

from __future__ import annotations

from sqlalchemy import JSON, Integer, LargeBinary, SmallInteger, String, Uuid, bindparam, text

from backinstock.db import UTCDateTime
from backinstock.subscriptions.models import ACTIVE_SQL, QUEUED

# The queue position (COUNT_AHEAD's count) comes back with the insert: one round trip, not
# two. The comparison is strict, so whether the subquery sees the new row (SQLite) or not
# (PostgreSQL's statement snapshot) does not change the count.
# The statuses are the Status enum's own constants, interpolated once, at import: no input
# ever reaches the SQL text (hence the noqa). A new subscription is ``waiting``, or
# ``pending`` until its shopper confirms; the position of a pending one is the place it
# takes once confirmed.
INSERT_SUBSCRIPTION = (
    text(
        "INSERT INTO subscriptions (id, sku, channel, contact_key_id, contact_blob, "  # noqa: S608
        "contact_index, profile_key_id, profile_blob, locale, timezone, customer_id, priority, "
        "priority_rank, source, consent_text_version, status, notification_count, created_at, "
        "updated_at, wechat_consents, attributes, segment) VALUES ("
        ":id, :sku, :channel, :contact_key_id, :contact_blob, :contact_index, :profile_key_id, "
        ":profile_blob, :locale, :timezone, :customer_id, :priority, :priority_rank, :source, "
        ":consent_text_version, :status, 0, :created_at, :created_at, "
        ":wechat_consents, :attributes, :segment) "
        f"ON CONFLICT (sku, contact_index) WHERE status IN ({ACTIVE_SQL}) DO NOTHING "
        "RETURNING id, (SELECT count(*) FROM subscriptions AS ahead "
        f"WHERE ahead.sku = :sku AND ahead.status IN ({QUEUED}) "
        "AND (ahead.priority_rank, ahead.created_at, ahead.id) < (:priority_rank, :created_at, :id)"
        ") AS ahead"
    )
    .bindparams(
        bindparam("id", type_=Uuid()),
        bindparam("contact_blob", type_=LargeBinary()),
        bindparam("contact_index", type_=LargeBinary()),
        bindparam("profile_blob", type_=LargeBinary()),
        bindparam("priority_rank", type_=SmallInteger()),
        bindparam("created_at", type_=UTCDateTime()),
        bindparam("timezone", type_=String()),
        bindparam("customer_id", type_=String()),
        bindparam("source", type_=String()),
        bindparam("profile_key_id", type_=String()),
        bindparam("consent_text_version", type_=String()),
        bindparam("attributes", type_=JSON(none_as_null=True)),
        bindparam("segment", type_=String()),
    )
    .columns(id=Uuid(), ahead=Integer())
)

# How many queued subscriptions of the SKU come before (rank, created_at, id).
COUNT_AHEAD = text(
    "SELECT count(*) FROM subscriptions "  # noqa: S608
    f"WHERE sku = :sku AND status IN ({QUEUED}) "
    "AND (priority_rank, created_at, id) < (:priority_rank, :created_at, :id)"
).bindparams(
    bindparam("priority_rank", type_=SmallInteger()),
    bindparam("created_at", type_=UTCDateTime()),
    bindparam("id", type_=Uuid()),
)
