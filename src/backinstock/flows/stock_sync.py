"""A catalogue's stock levels in one request (``POST /v1/restocks/batch``): up to
:data:`~backinstock.restocks.schemas.MAX_BATCH_LEVELS` events, each with the meaning it has
alone (``flows/restock.py``), in a constant number of statements however many SKUs it
names (a sell-out's compensation aside, which is per wave).

1. **Validation, per event.** An event that is not a valid ``POST /v1/restocks`` body, or
   that :func:`restock.check_event` refuses, gets its own 422 and is left out; the others go
   on.
2. **The events**, in one INSERT: an event recorded before (same location and
   ``event_id``) is a replay and gets its stored answer (200); a repeat within the request
   gets the answer of its first occurrence.
3. **The levels.** The SKUs' product rows are locked in SKU order (as the single path locks
   one), their location levels read once, and the events applied in request order: an event
   older than its location's level (stored, or set by an earlier event of the request) is
   recorded and not applied, exactly as alone. The new levels are written in one upsert. A
   SKU whose level would pass ``MAX_LEVEL`` refuses its events (422 each) and keeps
   nothing of them, not even the product names they carry.
4. **The waves**, from each SKU's level before the request to its level after
   (``restock.move_waves``, as a single event moves its SKU's): events of one SKU in one
   request collapse into one change, as a catalogue sync means them (a level that went
   0 → 5 → 0 within the request opens no wave and sends nothing). Each event's answer has
   its SKU's level after the request; ``first_wave`` is the step the SKU's change started,
   on the SKU's last applied event (0 on the others).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog import service as catalog
from backinstock.config import Settings
from backinstock.errors import InvalidField, error_body, invalid_summary, validation_details
from backinstock.flows import restock
from backinstock.restocks import service as stock
from backinstock.restocks.schemas import MAX_LEVEL, RestockIn, RestockOut
from backinstock.restocks.service import EventKey, LocationLevel, NewEvent


@dataclass(frozen=True)
class ItemOutcome:
    """One event's answer: ``status`` 202 (recorded), 200 (a replay) or 422 (refused, with
    ``error`` in the one error shape's ``{"code", "message", "details"}``)."""

    status: int
    result: RestockOut | None = None
    error: dict[str, Any] | None = None


def _refused(details: list[dict[str, Any]]) -> ItemOutcome:
    return ItemOutcome(
        422, error=error_body("invalid_field", invalid_summary(details), details)["error"]
    )


@dataclass
class BatchOutcome:
    items: list[ItemOutcome]
    waves_due: list[uuid.UUID] = field(default_factory=list)
    compensations: list[uuid.UUID] = field(default_factory=list)


@dataclass
class _Sku:
    """One SKU's events of the request, in request order, and its levels."""

    events: list[tuple[int, NewEvent, uuid.UUID]] = field(default_factory=list)
    applied: dict[int, bool] = field(default_factory=dict)  # index → applied
    last_applied: tuple[int, uuid.UUID] | None = None  # (index, event id)
    before: int = 0
    after: int = 0


async def record_batch(
    session: AsyncSession, settings: Settings, bodies: list[Any], now: datetime
) -> BatchOutcome:
    items: list[ItemOutcome | None] = [None] * len(bodies)
    valid = _validate(settings, bodies, items, now)
    ids = await stock.record_events(session, [event for _, event in valid], now)
    firsts, repeats = _firsts(valid, ids)
    outcome = BatchOutcome(items=[])
    skus = _by_sku(firsts)
    if skus:
        await _apply_levels(session, skus, items, now)
        await _move_waves(session, settings, skus, items, outcome, now)
    await _answer_replays(session, valid, firsts, repeats, items)
    outcome.items = [item for item in items if item is not None]
    assert len(outcome.items) == len(bodies)
    return outcome


def _validate(
    settings: Settings, bodies: list[Any], items: list[ItemOutcome | None], now: datetime
) -> list[tuple[int, NewEvent]]:
    """Each body as ``POST /v1/restocks`` validates it; a refused one gets its 422."""
    valid = []
    system_now = datetime.now(UTC)  # the future is judged by the system's clock, as alone
    for index, body in enumerate(bodies):
        try:
            payload = RestockIn.model_validate(body)
            restock.check_event(settings, payload, system_now)
        except ValidationError as exc:
            items[index] = _refused(validation_details(exc.errors(), prefix=f"levels.{index}"))
            continue
        except InvalidField as exc:
            details = [{**d, "field": f"levels.{index}.{d['field']}"} for d in exc.details]
            items[index] = _refused(details)
            continue
        valid.append((index, NewEvent(payload, payload.occurred_at or now)))
    return valid


def _firsts(
    valid: list[tuple[int, NewEvent]], ids: dict[EventKey, uuid.UUID]
) -> tuple[list[tuple[int, NewEvent, uuid.UUID]], list[int]]:
    """The events recorded now, each with its id (the first occurrence of its key), and the
    indexes of the rest: replays of earlier requests or repeats within this one."""
    firsts, repeats, seen = [], [], set()
    for index, event in valid:
        key = (event.payload.location, event.payload.event_id)
        if key in ids and key not in seen:
            seen.add(key)
            firsts.append((index, event, ids[key]))
        else:
            repeats.append(index)
    return firsts, repeats


def _by_sku(firsts: list[tuple[int, NewEvent, uuid.UUID]]) -> dict[str, _Sku]:
    skus: dict[str, _Sku] = defaultdict(_Sku)
    for index, event, event_id in firsts:
        skus[event.payload.sku].events.append((index, event, event_id))
    return dict(sorted(skus.items()))


async def _apply_levels(
    session: AsyncSession, skus: dict[str, _Sku], items: list[ItemOutcome | None], now: datetime
) -> None:
    """Lock the SKUs, apply each event in request order, write the levels in one upsert; a
    SKU whose level would pass MAX_LEVEL is refused whole. A SKU's level after is its level
    before less the old levels of the locations the request changed, plus their new ones."""
    await stock.lock_skus(session, list(skus), now)
    before = await stock.levels_of(session, list(skus))
    named = {(sku, e.payload.location) for sku, s in skus.items() for _, e, _ in s.events}
    known = await stock.location_levels(session, named)
    rows: list[tuple[str, str, int, datetime, uuid.UUID]] = []
    refused: list[uuid.UUID] = []
    for sku, state in list(skus.items()):
        written = _apply_in_order(sku, state, known)
        old = sum(known_level[0] for loc in written if (known_level := known.get((sku, loc))))
        state.before = before[sku]
        state.after = before[sku] - old + sum(available for available, _, _ in written.values())
        if state.after > MAX_LEVEL:
            refused.extend(_refuse(state, items))
            del skus[sku]
            continue
        rows.extend((sku, location, *written[location]) for location in sorted(written))
    await stock.forget_events(session, refused)
    await _products(session, skus)  # of the SKUs kept: a refused event keeps nothing
    await stock.write_levels(session, rows)


async def _products(session: AsyncSession, skus: dict[str, _Sku]) -> None:
    """Names and links an event carries are recorded as a single event records them. A
    sync repeats a SKU's product at every location: each distinct one is written once, at
    its last place in the request, so every field still ends with the value of the last
    event that gives it (the writes overwrite field by field)."""
    for sku, state in skus.items():
        given = [
            restock.product_info(event.payload)
            for _, event, _ in state.events
            if event.payload.product is not None
        ]
        for info in reversed(list(dict.fromkeys(reversed(given)))):
            await catalog.upsert_product(session, sku, info)


def _apply_in_order(
    sku: str, state: _Sku, known: dict[tuple[str, str], LocationLevel]
) -> dict[str, tuple[int, datetime, uuid.UUID]]:
    """Apply the SKU's events in request order: an event older than its location's level
    (stored in ``known``, or set by an earlier event of the request) is not applied.
    Returns the new rows of the locations changed; ``known`` is left as stored."""
    latest: dict[str, datetime] = {}
    written: dict[str, tuple[int, datetime, uuid.UUID]] = {}
    for index, event, event_id in state.events:
        location = event.payload.location
        stored = known.get((sku, location))
        current = latest.get(location, stored[1] if stored else None)
        applied = current is None or current <= event.occurred_at
        state.applied[index] = applied
        if applied:
            latest[location] = event.occurred_at
            written[location] = (event.payload.available, event.occurred_at, event_id)
            state.last_applied = index, event_id
    return written


def _refuse(state: _Sku, items: list[ItemOutcome | None]) -> list[uuid.UUID]:
    message = f"the SKU's level would exceed {MAX_LEVEL}"
    for index, _, _ in state.events:
        items[index] = _refused([{"field": f"levels.{index}.available", "message": message}])
    return [event_id for _, _, event_id in state.events]


def _change(state: _Sku) -> restock.SkuChange:
    """The SKU's change over the request, made by its last applied event (with none applied
    the level did not change, and no wave opens on the event named)."""
    applied = state.last_applied is not None
    event_id = state.last_applied[1] if state.last_applied else state.events[-1][2]
    return restock.SkuChange(stock.LevelChange(state.before, state.after, applied), event_id)


async def _move_waves(
    session: AsyncSession,
    settings: Settings,
    skus: dict[str, _Sku],
    items: list[ItemOutcome | None],
    outcome: BatchOutcome,
    now: datetime,
) -> None:
    """Each SKU's wave moves once, from its level before the request to its level after
    (every SKU's in a few statements: ``restock.move_waves``)."""
    changes = {sku: _change(state) for sku, state in skus.items()}
    moves = await restock.move_waves(session, settings, changes, now, outcome.compensations)
    outcome.waves_due.extend(m.wave_due for m in moves.values() if m.wave_due is not None)
    answers: list[RestockOut] = []
    for sku, state in skus.items():
        move = moves[sku]
        moved_by = state.last_applied[0] if state.last_applied else None
        for index, _, event_id in state.events:
            answer = RestockOut(
                restock_id=event_id,
                sku=sku,
                available=state.after,
                waiting=move.waiting,
                first_wave=move.first_wave if index == moved_by else 0,
                applied=state.applied[index],
            )
            items[index] = ItemOutcome(202, result=answer)
            answers.append(answer)
    await stock.answer_events(session, answers)


async def _answer_replays(
    session: AsyncSession,
    valid: list[tuple[int, NewEvent]],
    firsts: list[tuple[int, NewEvent, uuid.UUID]],
    repeats: list[int],
    items: list[ItemOutcome | None],
) -> None:
    """A replay gets the answer stored with its event; a repeat within the request, the
    answer of the event's first occurrence (or its 422, if its SKU was refused)."""
    if not repeats:
        return
    events = dict(valid)
    first_of = {(e.payload.location, e.payload.event_id): index for index, e, _ in firsts}
    keys = {(events[i].payload.location, events[i].payload.event_id) for i in repeats}
    stored = await stock.stored_answers(session, keys - set(first_of))
    for index in repeats:
        key = (events[index].payload.location, events[index].payload.event_id)
        if key in first_of:
            first = items[first_of[key]]
            assert first is not None
            items[index] = first if first.status == 422 else ItemOutcome(200, first.result)
        else:
            items[index] = ItemOutcome(200, result=stored[key])
