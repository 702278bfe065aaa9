"""Waiting for another process: the one place where the suite polls the wall clock.

A subprocess (a server, a worker the test kills, ``redis-server``, Chromium driving the
dashboard) does not run on the test's clock: the suite can only look for the evidence of
what it did (a port that answers, a row it wrote, a line in its log) until a deadline.
Work inside the test's own process is driven instead (``tests/workers.py``: the broker is
joined and the sweeper ticked on the test clock). A deadline here bounds a hang; it never
measures anything, and nothing is asserted absent because time went by.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_SECONDS = 0.05

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def poll_until(check: Check, within: float) -> bool:
    """Look for the evidence until it shows (True) or the deadline passes (False)."""
    deadline = time.monotonic() + within
    while True:
        met = check()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)


async def eventually(check: Check, within: float, what: str) -> None:
    assert await poll_until(check, within), f"timed out after {within:g} s: {what}"


def eventually_sync(check: Callable[[], bool], within: float, what: str) -> None:
    """The same for the synchronous helpers that start and stop subprocesses."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out after {within:g} s: {what}"
        time.sleep(POLL_SECONDS)
