"""A claim's statements are run by the driver on PostgreSQL (db.DriverStatement): the same
rows and values as the session's execution of the same statements, in the session's
transaction, committed or rolled back with it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from backinstock import db
from backinstock.catalog import service as catalog
from backinstock.catalog.models import ProductName
from backinstock.db import utcnow
from backinstock.dispatch import service as dispatch
from backinstock.dispatch.models import Notification, Status
from backinstock.runtime import Runtime
from backinstock.senders import outbox as outbox_module
from backinstock.senders.models import DevOutboxMessage
from backinstock.senders.outbox import DevOutboxSender
from backinstock.subscriptions.models import Subscription
from tests.conftest import BACKEND
from tests.dispatch.test_journal import _plan


async def test_a_claims_rows_read_by_the_driver_are_the_sessions(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 5)
    async with db.transaction(runtime.sessions) as session:
        session.add(ProductName(sku="SKU-1", locale="en", name="Red tee"))
        await session.execute(
            Subscription.__table__.update().values(attributes={"size": "M"})  # type: ignore[attr-defined]
        )
    async with db.transaction(runtime.sessions) as session:
        ids = list(await session.scalars(select(Notification.id)))
        claimed = db.dialect_name(session)
        statement = dispatch._claimed_rows(claimed)
        by_driver = await statement.all(session, {"b_ids": ids})
        by_session = [
            tuple(row) for row in await session.execute(statement.statement, {"b_ids": ids})
        ]
        names = await catalog.names_of(session, ["SKU-1", "SKU-2"])
    assert len(by_driver) == 5
    assert by_driver == by_session
    moments = [value for row in by_driver for value in row if isinstance(value, datetime)]
    assert moments and all(moment.tzinfo is not None for moment in moments)
    assert {row[-3] == {"size": "M"} for row in by_driver} == {True}  # attributes, as JSON
    assert names == {"SKU-1": [("en", "Red tee")]}


async def test_a_claim_on_the_driver_rolls_back_with_its_session(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 5)
    with pytest.raises(RuntimeError):
        async with db.transaction(runtime.sessions) as session:
            claim = uuid.uuid4()
            claimed = await dispatch.claim(session, None, timedelta(minutes=1), claim, utcnow())
            assert len(claimed) == 5
            raise RuntimeError
    async with db.transaction(runtime.sessions) as session:
        statuses = await session.execute(
            select(Notification.status, Notification.claim_id, func.count()).group_by(
                Notification.status, Notification.claim_id
            )
        )
        assert list(statuses) == [(Status.PENDING.value, None, 5)]


async def test_the_outbox_writes_its_rows_by_the_driver_once(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    await _plan(runtime, client, api_keys["inventory"], 3)
    async with db.transaction(runtime.sessions) as session:
        claim = uuid.uuid4()
        ids = await dispatch.claim(session, None, timedelta(minutes=1), claim, utcnow())
        deliveries = await dispatch.prepare(session, runtime.settings, runtime.keys, ids, utcnow())
    messages = [d.message for d in deliveries if isinstance(d, dispatch.Send)]
    outbox = DevOutboxSender("sms", runtime.sessions, runtime.keys.cipher)
    before = utcnow()
    first = await outbox.send_batch(messages)
    again = await outbox.send_batch(messages)  # a repeated write is harmless
    written = [r.notification_id for r in first]
    assert written == [r.notification_id for r in again] and sorted(written) == sorted(ids)
    async with db.transaction(runtime.sessions) as session:
        rows = list(await session.scalars(select(DevOutboxMessage)))
    assert sorted(r.notification_id for r in rows) == sorted(ids)
    assert all(r.created_at >= before and r.created_at.tzinfo is not None for r in rows)
    assert {r.recipient_masked for r in rows} == {m.to_masked for m in messages}


async def test_a_driver_statements_error_is_sqlalchemys(runtime: Runtime) -> None:
    """Callers catch SQLAlchemy's errors (the outbox writes a refused batch row by row on
    DBAPIError): a statement run by the driver raises them too, and its transaction rolls
    back as any other's."""
    orphan = {
        "id": uuid.uuid4(),
        "notification_id": uuid.uuid4(),  # no such message: the foreign key refuses it
        "channel": "sms",
        "recipient_masked": "+86 138****0000",
        "recipient_key_id": "k",
        "recipient_blob": b"x",
        "content_key_id": "k",
        "content_blob": b"x",
        "created_at": utcnow(),
    }
    with pytest.raises(IntegrityError):
        async with db.transaction(runtime.sessions) as session:
            await outbox_module._insert_statement(db.dialect_name(session)).many(session, [orphan])
    async with db.transaction(runtime.sessions) as session:
        assert await session.scalar(select(func.count()).select_from(DevOutboxMessage)) == 0


async def test_a_claim_to_the_outbox_begins_no_orm_session(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    """The claim, the outbox's write and the results are each a transaction of driver
    statements on a pooled connection (db.hot_transaction): the ORM session, whose begin,
    commit and close cost more CPU than those statements, is never begun."""
    await _plan(runtime, client, api_keys["inventory"], 5)
    senders = {"sms": DevOutboxSender("sms", runtime.sessions, runtime.keys.cipher)}
    begun: list[object] = []

    def session_begun(session: object, *_: object) -> None:
        begun.append(session)

    event.listen(Session, "after_begin", session_begun)
    try:
        claimed = await dispatch.deliver(
            runtime.sessions, runtime.settings, runtime.keys, senders, None
        )
    finally:
        event.remove(Session, "after_begin", session_begun)
    assert claimed == 5 and begun == []
    async with db.transaction(runtime.sessions) as session:
        statuses = await session.scalars(select(Notification.status))
        assert set(statuses) == {Status.SENT.value}
        assert await session.scalar(select(func.count()).select_from(DevOutboxMessage)) == 5


@pytest.mark.skipif(BACKEND != "postgres", reason="asyncpg's executemany")
async def test_the_outbox_writes_a_batch_without_a_transaction_of_its_own(
    runtime: Runtime,
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncpg's executemany is all or nothing by itself (one implicit transaction), so
    the outbox's INSERT is sent alone: no BEGIN and COMMIT round trips around it."""
    await _plan(runtime, client, api_keys["inventory"], 4)
    in_transaction: list[bool] = []
    executemany = asyncpg.Connection.executemany

    async def watched(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
        in_transaction.append(self.is_in_transaction())
        return await executemany(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "executemany", watched)
    senders = {"sms": DevOutboxSender("sms", runtime.sessions, runtime.keys.cipher)}
    assert (
        await dispatch.deliver(runtime.sessions, runtime.settings, runtime.keys, senders, None) == 4
    )
    assert in_transaction == [False]
    async with db.transaction(runtime.sessions) as session:
        assert await session.scalar(select(func.count()).select_from(DevOutboxMessage)) == 4


@pytest.mark.skipif(BACKEND != "postgres", reason="a PostgreSQL backend terminated")
async def test_a_connection_lost_under_a_driver_statement_is_invalidated(
    runtime: Runtime, client: httpx.AsyncClient, api_keys: dict[str, str]
) -> None:
    """The server ends the connection while a claim holds it (a restart, a failover): the
    driver statement raises SQLAlchemy's DBAPIError with the connection invalidated, so the
    pool drops it, and the next claim, on a fresh connection, takes the messages."""
    await _plan(runtime, client, api_keys["inventory"], 3)
    with pytest.raises(DBAPIError) as raised:
        async with db.hot_transaction(runtime.sessions) as session:
            connection = await session.connection()
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            backend = driver.get_server_pid()
            async with runtime.engine.connect() as other:
                # Returns once the backend has exited (or after 5 s): the claim below
                # always meets a closed connection.
                ended = text("SELECT pg_terminate_backend(:pid, 5000)")
                assert (await other.execute(ended, {"pid": backend})).scalar() is True
            await dispatch.claim(session, None, timedelta(minutes=1), uuid.uuid4(), utcnow())
    assert raised.value.connection_invalidated
    async with db.hot_transaction(runtime.sessions) as session:
        claimed = await dispatch.claim(session, None, timedelta(minutes=1), uuid.uuid4(), utcnow())
    assert len(claimed) == 3
