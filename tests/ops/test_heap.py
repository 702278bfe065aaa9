"""A booted server or worker process freezes what it holds at boot (see ops/heap.py)."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from backinstock import main, worker
from backinstock.config import Settings
from backinstock.ops.heap import YOUNG_THRESHOLD, settle_heap

# What load_configured may import: each provider's sender, and Twilio's SDK.
PROVIDER_MODULES = (
    "backinstock.senders.smtp_email",
    "backinstock.senders.twilio_sms",
    "backinstock.senders.wechat",
    "twilio.rest",
)


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
        "import json, sys\n"
        "from backinstock.config import Settings\n"
        "from backinstock.senders.registry import load_configured\n"
        f"names = {list(PROVIDER_MODULES)!r}\n"
        "before = [n for n in names if n in sys.modules]\n"
        "load_configured(Settings.from_env())\n"
        "print(json.dumps([before, [n for n in names if n in sys.modules]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKINSTOCK_")}
    env |= {"BACKINSTOCK_SMTP_HOST": "127.0.0.1", "BACKINSTOCK_SMTP_FROM": "shop@example.com"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert (before, after) == ([], ["backinstock.senders.smtp_email"])


@pytest.mark.parametrize(("redis_url", "loaded"), [("", True), ("redis://127.0.0.1:6379/9", False)])
async def test_a_server_imports_providers_only_for_its_own_workers(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, loaded: bool
) -> None:
    """The embedded mode's server runs workers, which send: their providers are imported
    before the heap is frozen. A production API server sends nothing and loads none."""
    settings = Settings.from_env()
    settings = dataclasses.replace(
        settings, core=settings.core.model_copy(update={"redis_url": redis_url})
    )
    order: list[str] = []

    class Stopped:
        def stop(self, timeout: int) -> None:
            order.append("workers stopped")

    class NoRuntime:
        async def close(self) -> None:
            pass

    monkeypatch.setattr(main.Runtime, "create", staticmethod(lambda settings: NoRuntime()))
    monkeypatch.setattr(worker, "start_embedded_worker", lambda threads: Stopped())
    monkeypatch.setattr(main, "load_configured", lambda settings: order.append("providers"))
    monkeypatch.setattr(main, "settle_heap", lambda: order.append("freeze"))
    app = main.create_app(settings)
    async with app.router.lifespan_context(app):
        pass
    if loaded:
        assert order == ["providers", "freeze", "workers stopped"]
    else:
        assert order == ["freeze"]
