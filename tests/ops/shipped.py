"""The monitoring files as shipped (monitoring/), read by the tests that run or check them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def scrape_seconds() -> float:
    """The shipped configuration's scrape interval ("5s", "1m", "1m30s")."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    interval = str(config["global"]["scrape_interval"])
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", interval)
    assert parts and interval, f"a scrape interval this test cannot read: {interval}"
    return 60 * int(parts[1] or 0) + int(parts[2] or 0)
