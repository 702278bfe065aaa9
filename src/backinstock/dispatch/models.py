from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, new_id, partial_index, utcnow


class Kind(enum.StrEnum):
    RESTOCK = "restock"  # "it's back": planned by a wave step
    FOLLOWUP = "followup"  # the coupon nudge, FOLLOWUP_AFTER_SECONDS later
    # "Please confirm": a pending subscription's double opt-in link (and SMS code). In no
    # wave; never held for quiet hours (the shopper asked a moment ago).
    CONFIRMATION = "confirmation"
    # "Sorry, it sold out again": to each shopper still in the queue when a wave closes
    # (SOLDOUT_COMPENSATION), once per wave, stating their place; maybe with a coupon.
    COMPENSATION = "compensation"
    # "Meanwhile, these are in stock": SUBSTITUTE_AFTER_SECONDS into a shopper's wait for a
    # sold-out SKU, once per subscription ever, naming its substitutes in stock (the rows of
    # substitute_offers). In no wave.
    SUBSTITUTE = "substitute"


class Status(enum.StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    # Claimed. While ``call_started_at`` is NULL no provider call has started: safe to hand
    # to anyone. Once it is set the call may have reached the provider: after a crash, the
    # message is in doubt ("in flight").
    SENDING = "sending"
    # In flight, as written before revision 0010 (still read: a worker of that version may
    # run beside this one during a rolling deploy).
    INFLIGHT = "inflight"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InDoubt(enum.StrEnum):
    """How a message left in doubt by a crash was settled."""

    UNRESOLVED = "unresolved"  # waiting for its channel's policy to act
    FOUND = "found"  # the provider's records show it was accepted: not sent again
    CALLBACK = "callback"  # the provider's status callback showed it was accepted
    RESENT = "resent"  # sent again (email: with the same Message-ID)
    DROPPED = "dropped"  # the channel's policy is not to risk a second message


class Reason(enum.StrEnum):
    """Why a message was not sent (``error``), when the answer is ours, not a provider's."""

    NOT_WAITING = "not_waiting"  # the shopper stopped waiting: cancelled
    NOT_PENDING = "not_pending"  # a confirmation whose request was confirmed or stopped: cancelled
    NO_COUPON = "no_coupon"  # a follow-up whose coupon was erased with its shopper: cancelled
    NO_CONTACT = "no_contact"  # every contact failed or was erased: failed
    RENDER_FAILED = "render_failed"  # this one message cannot be made: failed
    QUIET_HOURS = "quiet_hours"  # held until the shopper's quiet hours end: pending
    SOLD_OUT = "sold_out"  # the wave closed before it was sent: cancelled
    # A substitute offer whose shopper was told their SKU is back before it left: cancelled.
    BACK_IN_STOCK = "back_in_stock"
    IN_DOUBT = "in_doubt"  # a crash left its call in flight


# A skipped message the shopper no longer wants is cancelled; one nobody can send, failed.
CANCELLING = frozenset(
    {Reason.NOT_WAITING, Reason.NO_COUPON, Reason.NOT_PENDING, Reason.BACK_IN_STOCK}
)


class DeliveryReport(enum.StrEnum):
    """What a provider finally reported about a sent message (``delivery_status``)."""

    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


# The work index's rows: a sent message leaves it.
OPEN_OR_FAILED = (
    f"status IN ('{Status.PENDING}', '{Status.SENDING}', '{Status.INFLIGHT}', '{Status.FAILED}')"
)
SENT_AT_SET = "sent_at IS NOT NULL"
PROVIDER_ID_SET = "provider_id IS NOT NULL"
ONE_SUBSTITUTE = f"kind = '{Kind.SUBSTITUTE}'"
FOLLOWUP_PENDING = (
    f"kind = '{Kind.RESTOCK}' AND status = '{Status.SENT}' AND followed_up_at IS NULL"
)


class Notification(Base):
    """One message to one shopper for one wave: the unit of work (the outbox row).

    The unique (subscription, wave, kind) key makes a second restock message per wave, or a
    second follow-up, impossible. Status (see docs/architecture.md, "A message's states"):
    pending -> sending (claimed under a lease, provider not called) -> in flight (still
    ``sending``, with ``call_started_at`` set: the provider call has started) -> sent | failed
    | cancelled. A lapsed claim not started goes back to pending; a lapsed one in flight is in
    doubt and is resolved by the channel's policy.

    The in-flight mark touches no indexed column, so PostgreSQL can write it as a HOT
    update (no index entries) into the room the table's fillfactor (30, revision 0022;
    the claim's own new version takes part of it) leaves on each page: a status change
    would add an entry to each of the table's indexes, for every message, just to say
    that its call started.
    """

    __tablename__ = "notifications"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    subscription_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("subscriptions.id", ondelete="CASCADE")
    )
    # The wave of a restock message and its follow-up; NULL for a confirmation. Not a
    # checked foreign key on PostgreSQL (revision 0028): the writer inserts its own wave's
    # id, and waves are never deleted, but the check ran a query of ``waves`` each row.
    wave_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    sku: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(
        String(16), default=Kind.RESTOCK.value, server_default=Kind.RESTOCK.value
    )
    step: Mapped[int] = mapped_column(Integer)
    level: Mapped[int] = mapped_column(Integer)  # stock level when planned, for scarcity copy
    queue_size: Mapped[int] = mapped_column(Integer)
    # A compensation's shopper's place in the SKU's queue when it was planned; else NULL.
    place: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A restock message's unit is reserved for its shopper until then (the SKU holds stock
    # for the shoppers it tells; ``holds.until`` is copied from it); else NULL.
    held_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Which of the shopper's contacts to use: 0 the primary, n the fallback of rank n.
    contact_rank: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Which claim holds the row: every write of a claimed row is fenced by it, so a worker
    # whose lease lapsed can neither start nor record a message another worker took over.
    claim_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # A crash left an attempt in flight: "unresolved" until settled, then how it was settled
    # (InDoubt). None for the messages no crash touched.
    in_doubt: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # When this claim's provider call started (NULL: not yet). Not indexed, on purpose.
    call_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    provider_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # What the provider later reported (DeliveryReport; None: no report).
    delivery_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The tracked link: first click and how many.
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    click_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the follow-up for this restock message was decided (sent or skipped).
    followed_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("subscription_id", "wave_id", "kind"),
        # Partial indexes leave out the rows no reader looks up through them (finished
        # messages, NULLs): each of a message's three versions (planned, claimed, sent) is
        # written to every index whose predicate it meets (docs/architecture.md, "Indexes
        # a message is written to").
        # Claims, drains and the sweeper read its open messages by status and due time;
        # /metrics counts its open and failed ones by status and channel (an index-only
        # read: the channel is its last column). The sent history is not in it.
        partial_index(
            "ix_notifications_work", "status", "next_attempt_at", "channel", where=OPEN_OR_FAILED
        ),
        # A wave's progress: open messages, first and last sent (stats/pipeline.py).
        Index("ix_notifications_wave_progress", "wave_id", "status", "sent_at"),
        # Crash resolutions, for /metrics: only the few rows a crash touched.
        partial_index("ix_notifications_in_doubt", "in_doubt", where="in_doubt IS NOT NULL"),
        # Figures filter on when messages left, overall and per SKU.
        partial_index("ix_notifications_sent_at", "sent_at", where=SENT_AT_SET),
        partial_index("ix_notifications_sku_sent_at", "sku", "sent_at", where=SENT_AT_SET),
        # A provider's status callback finds its message by the provider's id.
        partial_index("ix_notifications_provider_id", "provider_id", where=PROVIDER_ID_SET),
        # Messages that never left count by created_at: a period reads only its own ones.
        partial_index(
            "ix_notifications_failed_created_at", "created_at", where=f"status = '{Status.FAILED}'"
        ),
        # One substitute message per subscription, ever: the unique (subscription, wave,
        # kind) key does not hold where wave_id is NULL.
        partial_index(
            "uq_notifications_one_substitute", "subscription_id", unique=True, where=ONE_SUBSTITUTE
        ),
        # Restock messages still owed a follow-up decision, oldest first.
        partial_index("ix_notifications_followup_due", "sent_at", where=FOLLOWUP_PENDING),
    )


class ConfirmationSent(Base):
    """When a contact was last sent a confirmation for a SKU: nobody gets more than one a
    day (``CONFIRMATION_INTERVAL``), however often a page asks. Keyed by the contact's
    blind index, never the contact; rows older than a day are deleted."""

    __tablename__ = "confirmations_sent"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    contact_index: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SubstituteOffer(Base):
    """A substitute a substitute message names, by its place in the message (1..): the
    tracked link ``/r/{token}/{position}`` leads to it, and an order of ``substitute_sku``
    carrying the message's token is "saved by a substitute". Written with the message, so
    what the shopper was offered is known whatever the list or the levels do later."""

    __tablename__ = "substitute_offers"

    notification_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("notifications.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    substitute_sku: Mapped[str] = mapped_column(String(128))
    # Its link: first click and how many.
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    click_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        # Figures count first clicks by when they happened.
        partial_index(
            "ix_substitute_offers_clicked_at", "clicked_at", where="clicked_at IS NOT NULL"
        ),
    )
