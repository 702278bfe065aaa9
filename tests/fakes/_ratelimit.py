"""Token bucket plus a sliding 1-second window meter shared by the HTTP fakes."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class RateMeter:
    """Throttle with a token bucket and remember the busiest 1-second window.

    ``max_observed_rate`` counts *arrivals* (accepted or throttled), because the
    question tests ask is "did the client ever send faster than allowed?", which
    the number of accepted requests alone cannot answer once the fake throttles.
    """

    def __init__(
        self,
        rate: float | None = None,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        # A bucket of ``rate`` tokens lets a well-behaved client send exactly
        # ``rate`` messages back to back after an idle period, like the real APIs.
        self.capacity = burst if burst is not None else max(1.0, rate or 1.0)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._window: deque[float] = deque()
        self._lock = threading.Lock()
        self.max_observed_rate = 0
        self.throttled = 0

    def hit(self) -> bool:
        """Record one arrival; return False when the bucket is empty (throttle)."""
        with self._lock:
            now = self._clock()
            self._observe(now)
            if self.rate is None:
                return True
            self._refill(now)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            self.throttled += 1
            return False

    def _observe(self, now: float) -> None:
        self._window.append(now)
        while self._window and self._window[0] <= now - 1.0:
            self._window.popleft()
        self.max_observed_rate = max(self.max_observed_rate, len(self._window))

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
