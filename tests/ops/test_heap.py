"""A booted server or worker process freezes what it holds at boot (see ops/heap.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from backinstock import worker
from backinstock.ops.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_what_exists_and_spaces_young_collections(
    restored_gc: None,
) -> None:
    booted = {"held": ["as long as the process"]}  # a container the collector tracks
    assert gc.is_tracked(booted)
    before = gc.get_freeze_count()

    settle_heap()

    assert gc.get_freeze_count() > before
    # Frozen: no longer in any generation a collection walks.
    assert not any(obj is booted for obj in gc.get_objects())
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_a_worker_process_settles_its_heap_once_booted(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "configure_logging", lambda *args, **kwargs: None)
    before = gc.get_freeze_count()
    worker.LogContext().after_process_boot(worker.broker)
    assert gc.get_freeze_count() > before


def test_a_worker_process_imports_its_providers_before_freezing(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Senders are built on the first message, after boot: the configured providers' client
    libraries are imported at boot, so that they are frozen with the rest."""
    order: list[str] = []
    monkeypatch.setattr(worker, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setattr(worker, "load_configured", lambda settings: order.append("providers"))
    monkeypatch.setattr(worker, "settle_heap", lambda: order.append("freeze"))
    worker.LogContext().after_process_boot(worker.broker)
    assert order == ["providers", "freeze"]


def test_only_the_configured_providers_are_imported() -> None:
    """In a fresh interpreter: email configured, so aiosmtplib's sender is loaded, and
    neither Twilio's SDK nor the WeChat sender."""
    probe = (
        "import sys\n"
        "from backinstock.config import Settings\n"
        "from backinstock.senders.registry import load_configured\n"
        "names = ('backinstock.senders.smtp_email', 'backinstock.senders.twilio_sms',\n"
        "         'backinstock.senders.wechat', 'twilio')\n"
        "before = [n in sys.modules for n in names]\n"
        "load_configured(Settings.from_env())\n"
        "print(before, [n in sys.modules for n in names])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env |= {"BACKINSTOCK_SMTP_HOST": "127.0.0.1", "BACKINSTOCK_SMTP_FROM": "shop@example.com"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.strip().split("] [")
    assert before == "[False, False, False, False"
    assert after == "True, False, False, False]"
