"""The subscribe hot path's SQL, built once.

Building a Core statement per request (``insert().values(...)``) costs more CPU than the
database round trip itself; these textual statements with typed parameters compile once
and run unchanged on PostgreSQL and SQLite (both know partial-index ON CONFLICT, RETURNING
with a subquery, and row-value comparison).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Uuid,
    bindparam,
    text,
)

from backinstock.db import DriverStatement, UTCDateTime
from backinstock.subscriptions.models import ACTIVE_SQL, QUEUED

# The queue position comes back with the insert: one round trip, not two. A new
# subscription is the newest of its rank, so the queue ahead of it is everyone queued at
# its rank or better: the sum of queue_counts (subscriptions.models.QueueCount), a few rows
# whatever the queue's length, where counting the queue itself grew with it. The count the
# INSERT's own trigger adds is not seen by the subquery, on either database (PostgreSQL's
# statement snapshot; SQLite evaluates RETURNING before the row's AFTER trigger): the sum
# is those ahead. COUNT_AHEAD, below, counts an existing subscription's place.
# The statuses are the Status enum's own constants, interpolated once, at import: no input
# ever reaches the SQL text (hence the noqa). A new subscription is ``waiting``, or
# ``pending`` until its shopper confirms; the position of a pending one is the place it
# takes once confirmed.
#
# Two reads ride along, each a round trip saved on every subscribe: the product's channel
# rule (product_policies.channels, "sms,email"; none: every channel) is the INSERT's
# condition, so a refused channel inserts nothing (the caller then reads the rule to tell
# a refusal from a repeat), and whether the product has substitutes comes back with the
# row (the caller reads them only then). Both tables are read here, never written.
INSERT_SUBSCRIPTION = (
    text(
        "INSERT INTO subscriptions (id, sku, channel, contact_key_id, contact_blob, "  # noqa: S608
        "contact_index, profile_key_id, profile_blob, locale, timezone, customer_id, priority, "
        "priority_rank, source, consent_text_version, status, notification_count, created_at, "
        "updated_at, wechat_consents, attributes, segment) SELECT "
        ":id, :sku, :channel, :contact_key_id, :contact_blob, :contact_index, :profile_key_id, "
        ":profile_blob, :locale, :timezone, :customer_id, :priority, :priority_rank, :source, "
        ":consent_text_version, :status, 0, :created_at, :created_at, "
        ":wechat_consents, :attributes, :segment "
        "WHERE NOT EXISTS (SELECT 1 FROM product_policies AS rule WHERE rule.sku = :sku "
        "AND rule.channels IS NOT NULL "
        "AND ',' || rule.channels || ',' NOT LIKE '%,' || :channel || ',%') "
        f"ON CONFLICT (sku, contact_index) WHERE status IN ({ACTIVE_SQL}) DO NOTHING "
        "RETURNING id, (SELECT coalesce(sum(ahead.waiting), 0) FROM queue_counts AS ahead "
        "WHERE ahead.sku = :sku AND ahead.priority_rank <= :priority_rank) AS ahead, "
        "EXISTS (SELECT 1 FROM product_substitutes AS s WHERE s.sku = :sku) AS substitutes"
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
        bindparam("sku", type_=String()),
        bindparam("channel", type_=String()),
        bindparam("contact_key_id", type_=String()),
        bindparam("locale", type_=String()),
        bindparam("priority", type_=String()),
        bindparam("status", type_=String()),
        bindparam("wechat_consents", type_=Integer()),
    )
    .columns(id=Uuid(), ahead=Integer(), substitutes=Boolean())
)

# On PostgreSQL, run by asyncpg itself (see db.DriverStatement): the hot path's one statement.
INSERT_SUBSCRIPTION_ON_DRIVER = DriverStatement(INSERT_SUBSCRIPTION)

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
