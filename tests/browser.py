"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by the
``playwright`` package (whose wheel bundles its driver, so no browser download).

Without them a browser test fails, saying what to install (``.ci/run`` installs
``chromium``)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("BACKINSTOCK_TEST_CHROMIUM", "/usr/bin/chromium"))
# Chromium's background connections (updates, sync, QUIC probes) pile up without a network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser(what: str) -> None:
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is missing (pip install -e '.[dev]')"
    if missing:
        pytest.fail(f"{what} needs Chromium: {missing}")


@asynccontextmanager
async def chromium(what: str) -> AsyncIterator[Any]:
    require_browser(what)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: BACKINSTOCK_TEST_ARTIFACTS (e.g. ``docs``), else a tmp folder."""
    folder = Path(os.environ.get("BACKINSTOCK_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
