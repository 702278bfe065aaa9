"""A booted server or worker process freezes what it holds at boot (see ops/heap.py)."""

from __future__ import annotations

import gc
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
