"""The clock tests hand to the code under test: it moves only when a test says so."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class SteppingClock:
    """The system time plus however far the test has moved it.

    Starting from the system time (rather than a fixed instant) keeps it level with what the
    code still stamps from the system clock (a row's ``created_at``, a provider's ``sent_at``):
    such an instant is never in this clock's future, so a test that moves the clock past a
    delay makes due everything that delay was holding back. Tests choose delays (minutes)
    that the test's own run time cannot reach, so nothing falls due unless the clock moves.
    """

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()  # workers read it from their own threads

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)
