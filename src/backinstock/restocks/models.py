from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from backinstock.db import Base, UTCDateTime, new_id, partial_index, utcnow


class StockLevel(Base):
    """The latest stock level of a SKU at one location (by the event's ``occurred_at``)."""

    __tablename__ = "stock_levels"

    sku: Mapped[str] = mapped_column(String(128), primary_key=True)
    location: Mapped[str] = mapped_column(String(64), primary_key=True)
    available: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    restock_id: Mapped[uuid.UUID] = mapped_column(Uuid)


class RestockEvent(Base):
    """Every stock event received, applied or not (late ones are kept and ignored)."""

    __tablename__ = "restock_events"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    location: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    sku: Mapped[str] = mapped_column(String(128), index=True)
    available: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied: Mapped[bool] = mapped_column(Boolean)
    level_after: Mapped[int] = mapped_column(Integer)
    waiting: Mapped[int] = mapped_column(Integer)
    first_wave: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("location", "event_id"),
        # Each location's last event (a silent feed), for /metrics.
        Index("ix_restock_events_location_received", "location", "received_at"),
    )


class WaveStatus(enum.StrEnum):
    OPEN = "open"  # from the restock until the SKU sells out
    CLOSED = "closed"  # sold out: no further steps


OPEN_WAVE = f"status = '{WaveStatus.OPEN}'"


class Wave(Base):
    """One restock's notification campaign for a SKU, from level > 0 until it sells out.

    ``target`` is how many shoppers the wave means to have told by the end of its current
    step and ``planned`` how many notifications it has written; a step is resumable because
    both live here, not in a worker's memory.
    """

    __tablename__ = "waves"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    sku: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=WaveStatus.OPEN.value)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    restock_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    step: Mapped[int] = mapped_column(Integer, default=0)
    target: Mapped[int] = mapped_column(Integer, default=0)
    planned: Mapped[int] = mapped_column(Integer, default=0)
    level: Mapped[int] = mapped_column(Integer, default=0)
    next_step_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The request that opened the wave or last raised its level (its X-Request-ID, which
    # the middleware admits only as 1-64 of [A-Za-z0-9._-]): the step's log lines carry it
    # whichever wake-up, the request's or the sweeper's, runs the step.
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        partial_index("uq_waves_open_sku", "sku", unique=True, where=OPEN_WAVE),
        Index("ix_waves_due", "status", "next_step_at"),
    )


class HoldState(enum.StrEnum):
    HELD = "held"  # the unit waits for its shopper until ``until``
    CONSUMED = "consumed"  # an order carried the shopper's token
    ENDED = "ended"  # the SKU sold out
    RELEASED = "released"  # expired, and its wave's next step made due


HELD = f"state = '{HoldState.HELD}'"


class StockHold(Base):
    """A unit kept for one told shopper: one per restock message, from the time the message
    is planned until ``until``. Held while ``state`` is ``held`` and ``until`` is ahead."""

    __tablename__ = "holds"

    notification_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    wave_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("waves.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(128))
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default=HoldState.HELD.value)

    __table_args__ = (
        # A SKU's units held now (the stock figure, a step's size).
        partial_index("ix_holds_held_sku", "sku", "until", where=HELD),
        # Holds that expired and still wait for the sweeper.
        partial_index("ix_holds_held_until", "until", where=HELD),
        # A sell-out ends its wave's holds.
        Index("ix_holds_wave", "wave_id"),
    )
