"""Orders and the conversions attributed to them: ``orders`` and ``conversions``, which
this package alone writes. Which message an order is attributed to is the order flow
(``flows/orders.py``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.conversions.models import Conversion, Method, Order, SubstituteSale
from backinstock.conversions.schemas import OrderOut
from backinstock.db import insert_for, new_id


async def insert_order(
    session: AsyncSession,
    order_id: str,
    currency: str,
    total: Decimal,
    occurred: datetime,
    now: datetime,
) -> uuid.UUID | None:
    """The order's row; None when a request with the same ``order_id`` committed it first."""
    # ON CONFLICT DO NOTHING waits for a concurrent insert of the same order_id to commit,
    # then inserts nothing: exactly one request attributes the order.
    return await session.scalar(  # type: ignore[no-any-return]
        insert_for(session, Order)
        .values(
            id=new_id(),
            order_id=order_id,
            currency=currency,
            total=total,
            occurred_at=occurred,
            received_at=now,
            response="",
        )
        .on_conflict_do_nothing(index_elements=[Order.order_id])
        .returning(Order.id)
    )


async def store_answer(session: AsyncSession, order_pk: uuid.UUID, answer: OrderOut) -> None:
    """Keep the first answer: a replay returns it."""
    await session.execute(
        update(Order).where(Order.id == order_pk).values(response=answer.model_dump_json())
    )


async def stored_answer(session: AsyncSession, order_id: str) -> OrderOut | None:
    stored = await session.scalar(select(Order.response).where(Order.order_id == order_id))
    return OrderOut.model_validate_json(stored) if stored else None


async def add_conversion(
    session: AsyncSession,
    order_pk: uuid.UUID,
    *,
    sku: str,
    subscription_id: uuid.UUID,
    notification_id: uuid.UUID | None,
    channel: str | None,
    method: Method,
    revenue: Decimal,
    currency: str,
    converted_at: datetime,
) -> None:
    session.add(
        Conversion(
            id=new_id(),
            order_pk=order_pk,
            subscription_id=subscription_id,
            notification_id=notification_id,
            sku=sku,
            channel=channel,
            method=method.value,
            revenue=revenue,
            currency=currency,
            converted_at=converted_at,
        )
    )


async def add_substitute_sale(
    session: AsyncSession,
    order_pk: uuid.UUID,
    *,
    sku: str,
    substitute_sku: str,
    subscription_id: uuid.UUID,
    notification_id: uuid.UUID,
    channel: str | None,
    revenue: Decimal,
    currency: str,
    saved_at: datetime,
) -> None:
    session.add(
        SubstituteSale(
            id=new_id(),
            order_pk=order_pk,
            subscription_id=subscription_id,
            notification_id=notification_id,
            sku=sku,
            substitute_sku=substitute_sku,
            channel=channel,
            revenue=revenue,
            currency=currency,
            saved_at=saved_at,
        )
    )
