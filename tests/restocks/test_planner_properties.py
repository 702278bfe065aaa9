"""Property tests of the wave planner on the real database code: whatever the shoppers and
the sequence of stock levels, steps notify the queue's head in order (VIPs first, then
registration order), each step's size follows the level less the units held for shoppers
already told (times the multiplier, from the settings or from the product's own rules), an
order carrying a told shopper's token frees nothing for the next ones, holds that expire
run the next step at once on the units they free, the restock's answer says how many its
step tells, nobody is told twice in a wave, and a sell-out ends the wave."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text, update

from backinstock import db
from backinstock.catalog import policy as product_policy
from backinstock.catalog.schemas import PolicyIn
from backinstock.config import Settings, WaveSettings
from backinstock.contacts import Channel
from backinstock.dispatch.models import Notification
from backinstock.flows import restock
from backinstock.flows.restock import RestockOutcome
from backinstock.identity import NormalizedContact
from backinstock.models import Base
from backinstock.restocks import holds
from backinstock.restocks.models import HoldState, StockHold, Wave, WaveStatus
from backinstock.restocks.schemas import RestockIn
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Priority, Subscription
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from backinstock.subscriptions.statements import INSERT_SUBSCRIPTION
from tests.helpers import phone

Action = tuple[str, int]  # ("level", n), ("tick", 0), ("buy", 0) or ("expire", 0)

HOLD_SECONDS = 3600

actions = st.lists(
    st.one_of(
        st.tuples(st.just("level"), st.integers(min_value=1, max_value=12)),
        st.tuples(st.just("tick"), st.just(0)),
        st.tuples(st.just("buy"), st.just(0)),
        st.tuples(st.just("expire"), st.just(0)),
    ),
    min_size=1,
    max_size=7,
)


async def _reset(runtime: Runtime) -> None:
    async with runtime.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(text(f"DELETE FROM {table.name}"))


async def _seed(runtime: Runtime, vip_flags: list[bool]) -> list[uuid.UUID]:
    """Shoppers in registration order; returns their ids in expected queue order."""
    rows = []
    async with db.transaction(runtime.sessions) as session:
        for i, vip in enumerate(vip_flags):
            contact = NormalizedContact(Channel.SMS, phone(i))
            priority = Priority.VIP if vip else Priority.STANDARD
            payload = SubscriptionCreate(
                sku="P", channel=Channel.SMS, contact=contact.value, priority=priority
            )
            index = runtime.keys.blind_index.digest(contact.index_form)
            row = _NewSubscription.build(runtime.keys, payload, contact, index)
            await session.execute(INSERT_SUBSCRIPTION, row.params)
            rows.append((0 if vip else 1, i, row.id))
    return [sub_id for _, _, sub_id in sorted(rows)]


async def _told(runtime: Runtime) -> list[uuid.UUID]:
    """Who was told, step by step; within a step (one batch) in queue order."""
    async with runtime.sessions() as session:
        return list(
            await session.scalars(
                select(Notification.subscription_id)
                .join(Subscription, Subscription.id == Notification.subscription_id)
                .order_by(
                    Notification.step,
                    Subscription.priority_rank,
                    Subscription.created_at,
                    Subscription.id,
                )
            )
        )


async def _post(runtime: Runtime, level: int, occurred: int) -> RestockOutcome:
    payload = RestockIn(
        event_id=f"e{occurred}",
        sku="P",
        available=level,
        occurred_at=db.utcnow() + timedelta(seconds=occurred),
    )
    async with db.transaction(runtime.sessions) as session:
        return await restock.record(session, runtime.settings, payload, db.utcnow())


async def _run(runtime: Runtime, wave_id: uuid.UUID) -> None:
    await restock.run(runtime.sessions, runtime.settings, wave_id, lambda ids: None)


async def _tick(runtime: Runtime) -> None:
    """The interval elapses: the wave's next step is due now."""
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(Wave)
            .where(Wave.status == WaveStatus.OPEN)
            .values(next_step_at=db.utcnow() - timedelta(seconds=1))
        )
        wave_id = await session.scalar(select(Wave.id).where(Wave.status == WaveStatus.OPEN))
    if wave_id is not None:
        await _run(runtime, wave_id)


async def _buy(runtime: Runtime) -> bool:
    """The first told shopper whose unit is still held orders it with their token."""
    async with db.transaction(runtime.sessions) as session:
        first = await session.scalar(
            select(StockHold.notification_id)
            .join(Notification, Notification.id == StockHold.notification_id)
            .where(StockHold.state == HoldState.HELD)
            .order_by(Notification.step, Notification.created_at, Notification.id)
            .limit(1)
        )
        return first is not None and await holds.consume(session, first, ["P"])


async def _expire(runtime: Runtime) -> list[uuid.UUID]:
    """Every hold's time is over: the sweeper releases them; returns the waves made due."""
    async with db.transaction(runtime.sessions) as session:
        await session.execute(
            update(StockHold)
            .where(StockHold.state == HoldState.HELD)
            .values(until=db.utcnow() - timedelta(seconds=1))
        )
        return await restock.release_expired_holds(session, db.utcnow())


async def _own_multiplier(runtime: Runtime, multiplier: float) -> None:
    """The product's rules set the multiplier (the settings keep theirs)."""
    async with db.transaction(runtime.sessions) as session:
        rules = PolicyIn(batch_multiplier=multiplier)
        await product_policy.replace(session, "P", rules, db.utcnow())


class _Model:
    """What the planner should do: who is told is the queue's head, ``expected`` long."""

    def __init__(self, multiplier: float, holding: bool) -> None:
        self.multiplier = multiplier
        self.holding = holding
        self.level = 0
        self.expected = 0  # shoppers the wave means to have told
        self.held = 0  # units held for told shoppers who neither bought nor lost them

    def step(self, queue_length: int) -> None:
        """A step at the level of now, on the units not held for anyone."""
        told_before = min(self.expected, queue_length)
        self.expected += math.ceil(max(self.level - self.held, 0) * self.multiplier)
        if self.holding:
            self.held += min(self.expected, queue_length) - told_before


async def _act(
    runtime: Runtime, model: _Model, queue: list[uuid.UUID], action: Action, n: int
) -> None:
    kind, value = action
    if kind == "level":
        outcome = await _post(runtime, value, n)
        rising = value > model.level
        model.level = value
        if not rising:
            assert outcome.wave_due is None
            return
        model.step(len(queue))
        assert outcome.wave_due is not None
        already = len(await _told(runtime))
        await _run(runtime, outcome.wave_due)
        told_now = len(await _told(runtime)) - already
        assert outcome.result.first_wave == told_now  # the step's own sizing
    elif kind == "tick":
        await _tick(runtime)
        model.step(len(queue))
    elif kind == "buy":
        # The order consumes the buyer's hold; the store's level follows it down.
        assert await _buy(runtime) == (model.held > 0)
        if model.held > 0:
            model.held -= 1
            await _post(runtime, model.level - 1, n)
            model.level -= 1
    else:
        due = await _expire(runtime)
        assert bool(due) == (model.held > 0), "released units make the wave's next step due"
        model.held = 0
        for wave_id in due:
            await _run(runtime, wave_id)
            model.step(len(queue))


async def _scenario(
    base: Settings,
    vip_flags: list[bool],
    steps: list[Action],
    multiplier: float,
    source: str,
    holding: bool,
) -> None:
    hold = HOLD_SECONDS if holding else 0
    wave_settings = (
        WaveSettings(batch_multiplier=multiplier, max_notifications=10, hold_seconds=hold)
        if source == "settings"
        else WaveSettings(max_notifications=10, hold_seconds=hold)
    )
    runtime = Runtime.create(dataclasses.replace(base, waves=wave_settings))
    try:
        await _reset(runtime)
        if source == "product":
            await _own_multiplier(runtime, multiplier)
        queue = await _seed(runtime, vip_flags)
        model = _Model(multiplier, holding)
        for occurred, action in enumerate(steps, start=1):
            if action[0] == "buy" and model.level <= 1:
                continue  # the last unit sold is a sell-out, the scenario's end
            await _act(runtime, model, queue, action, occurred)
            told = await _told(runtime)
            assert told == queue[: min(model.expected, len(queue))]  # order, sizes, never twice
        await _post(runtime, 0, len(steps) + 1)  # sold out
        before = await _told(runtime)
        await _tick(runtime)
        async with runtime.sessions() as session:
            open_waves = await session.scalar(
                select(func.count()).select_from(Wave).where(Wave.status == WaveStatus.OPEN)
            )
            still_held = await session.scalar(
                select(func.count()).select_from(StockHold).where(StockHold.state == HoldState.HELD)
            )
        assert open_waves == 0
        assert still_held == 0, "a sell-out ends every hold"
        assert len(await _told(runtime)) == len(before), "no step after a sell-out"
    finally:
        await _reset(runtime)
        await runtime.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    vip_flags=st.lists(st.booleans(), min_size=0, max_size=25),
    steps=actions,
    multiplier=st.sampled_from([0.5, 1.0, 1.5]),
    source=st.sampled_from(["settings", "product"]),
    holding=st.booleans(),
)
def test_planner_properties(
    migrated: str,
    settings: Settings,
    vip_flags: list[bool],
    steps: list[Action],
    multiplier: float,
    source: str,
    holding: bool,
) -> None:
    asyncio.run(_scenario(settings, vip_flags, steps, multiplier, source, holding))
