from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from backinstock.dispatch.quiet import hold_until

NIGHT = (time(21, 0), time(9, 0))


@pytest.mark.parametrize(
    ("utc_now", "expected"),
    [
        (datetime(2026, 11, 21, 12, 59, tzinfo=UTC), None),
        (datetime(2026, 11, 21, 13, 0, tzinfo=UTC), datetime(2026, 11, 22, 1, 0, tzinfo=UTC)),
        (datetime(2026, 11, 21, 18, 0, tzinfo=UTC), datetime(2026, 11, 22, 1, 0, tzinfo=UTC)),
        (datetime(2026, 11, 22, 0, 59, tzinfo=UTC), datetime(2026, 11, 22, 1, 0, tzinfo=UTC)),
        (datetime(2026, 11, 22, 1, 0, tzinfo=UTC), None),
        (datetime(2026, 11, 21, 12, 0, tzinfo=UTC), None),
    ],
)
def test_shanghai_nights_are_held_until_nine(utc_now: datetime, expected: datetime | None) -> None:
    # 21:00-09:00 in Asia/Shanghai (UTC+8) is 13:00-01:00 UTC.
    assert hold_until(utc_now, "Asia/Shanghai", NIGHT) == expected


def test_same_day_window_and_disabled_window() -> None:
    lunch = (time(12, 0), time(14, 0))
    noon_utc = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)
    assert hold_until(noon_utc, "UTC", lunch) == datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    assert hold_until(noon_utc, "UTC", None) is None


def test_the_window_follows_the_shoppers_zone_across_dst() -> None:
    # New York leaves DST on 2026-11-01: 09:00 local is 14:00 UTC afterwards.
    late = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)  # 19:00 EDT: not quiet yet
    assert hold_until(late, "America/New_York", NIGHT) is None
    night = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)  # 23:00 EDT on Oct 31
    assert hold_until(night, "America/New_York", NIGHT) == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)
