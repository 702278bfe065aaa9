"""Subscribe's transaction (db.transaction_on_connection) and its INSERT run by the driver
(db.DriverStatement): the same rows, values and all-or-nothing outcome as a session's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from backinstock import db
from backinstock.catalog.models import Product
from backinstock.contacts import Channel
from backinstock.identity import NormalizedContact
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Priority, Subscription
from backinstock.subscriptions.schemas import SubscriptionCreate
from backinstock.subscriptions.service import _NewSubscription
from backinstock.subscriptions.statements import (
    INSERT_SUBSCRIPTION,
    INSERT_SUBSCRIPTION_ON_DRIVER,
)
from tests.conftest import BACKEND
from tests.helpers import phone


def _row(runtime: Runtime, n: int, priority: Priority = Priority.STANDARD) -> dict[str, Any]:
    contact = NormalizedContact(Channel.SMS, phone(n))
    payload = SubscriptionCreate(
        sku="P", channel=Channel.SMS, contact=contact.value, priority=priority,
        attributes={"size": "M"} if n % 2 else {},
    )  # fmt: skip
    index = runtime.keys.blind_index.digest(contact.index_form)
    return _NewSubscription.build(runtime.keys, payload, contact, index).params


async def _ids(runtime: Runtime) -> set[uuid.UUID]:
    async with db.transaction(runtime.sessions) as session:
        return set(await session.scalars(select(Subscription.id)))


async def test_the_driver_returns_what_the_session_would(runtime: Runtime) -> None:
    first, second, vip = _row(runtime, 1), _row(runtime, 2), _row(runtime, 3, Priority.VIP)
    async with db.transaction(runtime.sessions) as session:
        by_session = (await session.execute(INSERT_SUBSCRIPTION, first)).first()
    assert by_session is not None
    async with db.transaction_on_connection(runtime.engine) as session:
        after = await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, second)
        ahead_of_vip = await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, vip)
        repeat = await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, second)
    assert by_session._mapping == {"id": first["id"], "ahead": 0, "substitutes": False}
    assert after == {"id": second["id"], "ahead": 1, "substitutes": False}
    assert ahead_of_vip == {"id": vip["id"], "ahead": 0, "substitutes": False}
    assert repeat is None  # ON CONFLICT DO NOTHING
    async with db.transaction(runtime.sessions) as session:
        stored = await session.get(Subscription, second["id"])
        assert stored is not None
        assert (stored.created_at, stored.contact_blob) == (
            second["created_at"],
            second["contact_blob"],
        )
        assert (await session.get(Subscription, first["id"])).attributes == {"size": "M"}  # type: ignore[union-attr]


async def test_a_failure_rolls_back_the_driver_statement_and_the_session(
    runtime: Runtime,
) -> None:
    called: list[str] = []
    with pytest.raises(RuntimeError):
        async with db.transaction_on_connection(runtime.engine) as session:
            assert await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, _row(runtime, 1))
            session.add(Product(sku="P", name="Shirt"))
            await session.flush()
            db.after_commit(session, lambda: called.append("committed"))
            raise RuntimeError
    assert await _ids(runtime) == set()
    async with db.transaction(runtime.sessions) as session:
        assert await session.scalar(select(func.count()).select_from(Product)) == 0
    assert called == []


async def test_the_driver_statement_and_the_session_commit_together(runtime: Runtime) -> None:
    called: list[str] = []
    row = _row(runtime, 1)
    async with db.transaction_on_connection(runtime.engine) as session:
        assert await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, row)
        session.add(Product(sku="P", name="Shirt"))  # flushed at the end, as a commit would
        db.after_commit(session, lambda: called.append("committed"))
        assert called == []
    assert called == ["committed"]
    assert await _ids(runtime) == {row["id"]}
    async with db.transaction(runtime.sessions) as session:
        assert (await session.get(Product, "P")) is not None


async def test_a_session_from_the_factory_runs_the_driver_statement_in_its_transaction(
    runtime: Runtime,
) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction(runtime.sessions) as session:
            assert await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, _row(runtime, 1))
            raise RuntimeError
    assert await _ids(runtime) == set()


async def test_a_statement_alone_commits_on_its_own_on_postgresql(runtime: Runtime) -> None:
    """``alone``: on PostgreSQL the statement commits at once (one round trip); what the
    session does afterwards is still all-or-nothing. SQLite runs it in the transaction."""
    row = _row(runtime, 1)
    with pytest.raises(RuntimeError):
        async with db.transaction_on_connection(runtime.engine) as session:
            assert await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, row, alone=True)
            session.add(Product(sku="P", name="Shirt"))
            await session.flush()
            raise RuntimeError
    assert await _ids(runtime) == ({row["id"]} if BACKEND == "postgres" else set())
    async with db.transaction(runtime.sessions) as session:
        assert await session.scalar(select(func.count()).select_from(Product)) == 0
