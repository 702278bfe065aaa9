"""Ids (db.new_id, db.new_ids): UUIDv7s (RFC 9562), increasing in the order they were made
within a process, whether made one at a time or a batch at a time."""

from __future__ import annotations

import itertools
import uuid

import pytest

from backinstock import db

MILLIS = 1_796_000_000_000  # 2026-11-30


def test_ids_are_version_7_with_the_time_in_their_first_48_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(db, "_last_id", 0)  # no id made earlier in this process
    monkeypatch.setattr(db.time, "time_ns", lambda: MILLIS * 1_000_000 + 999)
    for made in [db.new_id()], db.new_ids(50):
        for made_id in made:
            assert made_id.version == 7 and made_id.variant == uuid.RFC_4122
            assert made_id.int >> 80 == MILLIS


def test_within_one_millisecond_ids_still_increase_one_by_one_or_in_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock stands still and the randomness falls: every id steps past the last."""
    monkeypatch.setattr(db, "_last_id", 0)
    monkeypatch.setattr(db.time, "time_ns", lambda: MILLIS * 1_000_000)
    falling = itertools.count(255, -1)
    monkeypatch.setattr(
        db.secrets, "token_bytes", lambda n: bytes(max(next(falling), 0) for _ in range(n))
    )
    made = [db.new_id(), *db.new_ids(3), db.new_id(), *db.new_ids(40), *db.new_ids(1)]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert {made_id.version for made_id in made} == {7}


def test_a_batch_draws_the_systems_randomness_once(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    token_bytes = db.secrets.token_bytes

    def counted(n: int) -> bytes:
        draws.append(n)
        return token_bytes(n)

    monkeypatch.setattr(db.secrets, "token_bytes", counted)
    made = db.new_ids(200)
    assert draws == [2000] and len(set(made)) == 200 and made == sorted(made)
