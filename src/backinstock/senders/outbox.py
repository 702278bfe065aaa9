"""The dev outbox: for channels without a provider, messages are stored, never sent.

Writing the message is idempotent per notification (a unique key), so a worker killed
between writing and recording the result cannot produce a second message.
"""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import Select, delete
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock.crypto import FieldCipher, Sealed
from backinstock.db import (
    DriverStatement,
    dialect_name,
    hot_transaction,
    insert_of,
    new_ids,
    utcnow,
)
from backinstock.identity import content_aad, outbox_aad
from backinstock.senders.base import UNRECORDED, Journal, Outcome, OutgoingMessage, SendResult
from backinstock.senders.models import DevOutboxMessage

log = structlog.get_logger(__name__)

_OUTBOX = DevOutboxMessage.metadata.tables[DevOutboxMessage.__tablename__]


@dataclass(frozen=True)
class OutboxContent:
    subject: str | None
    body: str


def seal_content(
    cipher: FieldCipher, row_id: uuid.UUID, subject: str | None, body: str
) -> dict[str, Any]:
    """A message's subject and body as stored: one sealed JSON document. They carry the
    shopper's name and live click and unsubscribe tokens, so they are sealed like contacts."""
    document = json.dumps({"subject": subject, "body": body}, ensure_ascii=False)
    sealed = cipher.seal(document, content_aad(row_id.bytes))
    return {"content_key_id": sealed.key_id, "content_blob": sealed.blob}


class StoredContent(Protocol):
    """A dev-outbox row, or anything holding its id and sealed content (a raw SQL row)."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def content_key_id(self) -> str: ...

    @property
    def content_blob(self) -> bytes: ...


def open_content(cipher: FieldCipher, row: StoredContent) -> OutboxContent:
    """The one way to read a stored message (the admin view, tests, benchmarks)."""
    sealed = Sealed(row.content_key_id, row.content_blob)
    document = json.loads(cipher.open(sealed, content_aad(row.id.bytes)))
    return OutboxContent(subject=document["subject"], body=document["body"])


class DevOutboxSender:
    marks_starts = False  # a repeated write is harmless: only results are recorded

    def __init__(
        self, channel: str, sessions: async_sessionmaker[AsyncSession], cipher: FieldCipher
    ) -> None:
        self.channel = channel
        self._sessions = sessions
        self._cipher = cipher

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]:
        # A repeated write is harmless (the unique key), so the batch needs no record that
        # it started, only of its results: one INSERT for the batch.
        return await journal.call_idempotent(messages, self._write)

    async def _write(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        if not messages:
            return []
        rows = []
        now = utcnow()
        for message, row_id in zip(messages, new_ids(len(messages)), strict=True):
            sealed = self._cipher.seal(message.to, outbox_aad(row_id.bytes))
            rows.append(
                {
                    "id": row_id,
                    "notification_id": message.notification_id,
                    "channel": message.channel,
                    "recipient_masked": message.to_masked,
                    "recipient_key_id": sealed.key_id,
                    "recipient_blob": sealed.blob,
                    **seal_content(self._cipher, row_id, message.subject, message.text),
                    "created_at": now,
                }
            )
        try:
            await self._insert(rows)
        except DBAPIError:
            # One row the database refuses must not fail the others: write them one by one.
            return [await self._write_alone(row) for row in rows]
        return [_stored(row) for row in rows]

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        # One executemany of a statement built once, run by the driver on PostgreSQL:
        # SQLAlchemy's own executemany handled every row's parameters again (as the ORM's
        # bulk path did before it), more CPU than the sealing of the row. Alone: all the
        # rows or none, committed without a BEGIN and a COMMIT of their own.
        async with hot_transaction(self._sessions) as session:
            await _insert_statement(dialect_name(session)).many(session, rows, alone=True)

    async def _write_alone(self, row: dict[str, Any]) -> SendResult:
        try:
            await self._insert([row])
        except DBAPIError as exc:
            log.warning(
                "outbox_write_refused",
                notification_id=str(row["notification_id"]),
                error_type=type(exc.orig).__name__,  # never the statement or its values
            )
            return SendResult(row["notification_id"], Outcome.PERMANENT, error="outbox:unstorable")
        return _stored(row)


@functools.cache
def _insert_statement(dialect: str) -> DriverStatement:
    """A row of the outbox, unless the message has one (a repeated write is harmless):
    every column a parameter of its own name, so each row gives them all."""
    return DriverStatement(
        insert_of(dialect, _OUTBOX).on_conflict_do_nothing(
            index_elements=[_OUTBOX.c.notification_id]
        )
    )


async def forget(session: AsyncSession, notification_ids: Select[uuid.UUID]) -> None:
    """Delete the copies of these messages (their shopper's data is being erased)."""
    await session.execute(
        delete(DevOutboxMessage).where(DevOutboxMessage.notification_id.in_(notification_ids))
    )


def _stored(row: dict[str, Any]) -> SendResult:
    notification_id = row["notification_id"]
    return SendResult(notification_id, Outcome.SENT, provider_id=f"outbox:{notification_id}")
