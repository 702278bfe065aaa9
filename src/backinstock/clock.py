"""Time as a dependency: whatever schedules work (the sweeper, wave steps, quiet hours,
follow-ups, retention) asks a :class:`Clock` for the time instead of reading the system's,
so that a test can move time forward instead of waiting for it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


SYSTEM_CLOCK: Clock = SystemClock()
