"""Quiet hours: no SMS between, say, 21:00 and 09:00 in the shopper's own time zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def hold_until(now: datetime, timezone: str, window: tuple[time, time] | None) -> datetime | None:
    """When the window covers the shopper's local ``now``, the UTC instant it ends; else None.

    A window may wrap midnight (21:00-09:00) or not (12:00-14:00); its end is exclusive.
    """
    if window is None:
        return None
    start, end = window
    local = now.astimezone(ZoneInfo(timezone))
    today_start = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    today_end = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if start <= end:  # same-day window
        inside = today_start <= local < today_end
        ends = today_end
    elif local.time() >= start:  # evening part of a window that wraps midnight
        inside, ends = True, today_end + timedelta(days=1)
    else:  # morning part
        inside, ends = local < today_end, today_end
    if not inside:
        return None
    # Rebuild the wall-clock end in the zone, so a DST change overnight is respected.
    wall = datetime.combine(ends.date(), end, tzinfo=ZoneInfo(timezone))
    return wall.astimezone(UTC)
