"""Coupons: pools of uploaded codes and generated ones, each handed out at most once.

Handing out is one UPDATE of one free row chosen with ``FOR UPDATE SKIP LOCKED``: two workers
never take the same code, and neither waits for the other. ``coupons.code`` and
``coupons.subscription_id`` are unique, so even a bug could not hand a code out twice or give
a shopper two coupons.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.selectable import Subquery

from backinstock.coupons.models import Coupon, CouponPool, Redemption
from backinstock.coupons.schemas import PoolIn, PoolOut
from backinstock.db import insert_for, new_id
from backinstock.errors import Conflict, InvalidField

# No 0/O, 1/I/L or U: a shopper types the code from a phone screen into a checkout box.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8  # 30^8 ≈ 6.6e11 codes: collisions are rare, and retried when they happen
GENERATE_ATTEMPTS = 5
INSERT_CHUNK = 1000


def generate_code(prefix: str) -> str:
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


async def create_pool(session: AsyncSession, payload: PoolIn) -> PoolOut:
    codes = payload.codes
    if len(set(codes)) != len(codes):
        raise InvalidField("codes", "contains the same code more than once")
    if await session.scalar(select(CouponPool.id).where(CouponPool.name == payload.name)):
        raise Conflict("A coupon pool with this name exists.", code="pool_exists")
    await _refuse_known_codes(session, codes)
    pool = CouponPool(
        id=new_id(), name=payload.name, sku=payload.sku, description=payload.description
    )
    session.add(pool)
    await session.flush()
    for start in range(0, len(codes), INSERT_CHUNK):
        rows = [
            {"id": new_id(), "code": code, "pool_id": pool.id}
            for code in codes[start : start + INSERT_CHUNK]
        ]
        await session.execute(insert_for(session, Coupon), rows)
    return await pool_summary(session, pool.id)  # type: ignore[return-value]


async def _refuse_known_codes(session: AsyncSession, codes: list[str]) -> None:
    """A code already known (in any pool, or generated) would be ambiguous at redemption."""
    for start in range(0, len(codes), INSERT_CHUNK):
        chunk = codes[start : start + INSERT_CHUNK]
        taken = await session.scalar(select(func.count()).where(Coupon.code.in_(chunk)))
        if taken:
            raise Conflict(
                f"{taken} of the codes already exist; nothing was uploaded.",
                code="duplicate_codes",
            )


async def pool_summary(session: AsyncSession, pool_id: uuid.UUID) -> PoolOut | None:
    pool = await session.get(CouponPool, pool_id)
    if pool is None:
        return None
    total, issued, redeemed = (
        await session.execute(
            select(
                func.count(),
                func.count(Coupon.issued_at),
                func.count(Coupon.redeemed_at),
            ).where(Coupon.pool_id == pool_id)
        )
    ).one()
    return PoolOut(
        id=pool.id,
        name=pool.name,
        sku=pool.sku,
        description=pool.description,
        created_at=pool.created_at,
        total=total,
        issued=issued,
        redeemed=redeemed,
        available=total - issued,
    )


async def issue(
    session: AsyncSession,
    prefix: str,
    *,
    subscription_id: uuid.UUID,
    notification_id: uuid.UUID | None,
    sku: str,
    channel: str | None,
    now: datetime,
) -> str:
    """Hand one coupon to the subscription: the oldest free code of a pool for this SKU,
    else of a pool for any SKU, else a generated one. Returns the code."""
    values: dict[str, object] = {
        "subscription_id": subscription_id,
        "notification_id": notification_id,
        "sku": sku,
        "channel": channel,
        "issued_at": now,
    }
    free = (
        select(Coupon.id)
        .join(CouponPool, CouponPool.id == Coupon.pool_id)
        .where(Coupon.issued_at.is_(None), (CouponPool.sku == sku) | CouponPool.sku.is_(None))
        .order_by(CouponPool.sku.is_(None), CouponPool.created_at, Coupon.id)
        .limit(1)
        .with_for_update(of=Coupon, skip_locked=True)
    )
    code = await session.scalar(
        update(Coupon)
        .where(Coupon.id == free.scalar_subquery(), Coupon.issued_at.is_(None))
        .values(**values)
        .returning(Coupon.code)
    )
    if code is not None:
        return str(code)
    return await _generate(session, prefix, values)


async def issue_from_pools(
    session: AsyncSession, sku: str, messages: Subquery, count: int, now: datetime
) -> int:
    """Hand uploaded codes to ``messages`` (columns notification_id, subscription_id,
    channel; at most ``count``), in one UPDATE: the i-th message without a coupon gets the
    i-th free code (pools for the SKU first, then pools for any SKU, oldest code first).
    Codes are never generated here: when the pools run dry the rest get none, and a
    shopper who already holds a coupon (one per subscription, ever) gets no second one.
    Returns how many were handed out."""
    if count == 0:
        return 0
    held = aliased(Coupon)
    wanted = (
        select(
            messages.c.notification_id,
            messages.c.subscription_id,
            messages.c.channel,
            func.row_number().over(order_by=messages.c.notification_id).label("k"),
        )
        .where(~exists().where(held.subscription_id == messages.c.subscription_id))
        .subquery("wanted")
    )
    code = aliased(Coupon)
    anywhere = CouponPool.sku.is_(None)
    locked = (
        select(code.id, anywhere.label("anywhere"), CouponPool.created_at)
        .join(CouponPool, CouponPool.id == code.pool_id)
        .where(code.issued_at.is_(None), (CouponPool.sku == sku) | anywhere)
        .order_by(anywhere, CouponPool.created_at, code.id)
        .limit(count)
        .with_for_update(of=code, skip_locked=True)
        .subquery("locked")
    )
    order = (locked.c.anywhere, locked.c.created_at, locked.c.id)
    free = select(locked.c.id, func.row_number().over(order_by=order).label("k")).subquery("free")
    pairs = (
        select(free.c.id, wanted.c.notification_id, wanted.c.subscription_id, wanted.c.channel)
        .join(wanted, wanted.c.k == free.c.k)
        .subquery("pairs")
    )
    issued = await session.scalars(
        update(Coupon)
        .where(Coupon.id == pairs.c.id, Coupon.issued_at.is_(None))
        .values(
            subscription_id=pairs.c.subscription_id,
            notification_id=pairs.c.notification_id,
            sku=sku,
            channel=pairs.c.channel,
            issued_at=now,
        )
        .returning(Coupon.id)
    )
    return len(list(issued))


async def _generate(session: AsyncSession, prefix: str, values: dict[str, object]) -> str:
    for _ in range(GENERATE_ATTEMPTS):
        code = generate_code(prefix)
        inserted = await session.scalar(
            insert_for(session, Coupon)
            .values(id=new_id(), code=code, **values)
            .on_conflict_do_nothing(index_elements=[Coupon.code])
            .returning(Coupon.code)
        )
        if inserted is not None:
            return str(inserted)
    raise RuntimeError("no unique coupon code in several attempts: lengthen CODE_LENGTH")


async def redeem(
    session: AsyncSession, code: str, order_pk: uuid.UUID, occurred: datetime
) -> tuple[Redemption, Coupon | None]:
    """Redeem the code for the order; returns what the code was, and the coupon when this
    order redeemed it. The row lock decides which of two racing orders redeems it."""
    coupon = await session.scalar(select(Coupon).where(Coupon.code == code).with_for_update())
    if coupon is None:
        return Redemption.UNKNOWN, None
    if coupon.issued_at is None:
        return Redemption.NOT_ISSUED, None
    if coupon.redeemed_at is not None:
        return Redemption.ALREADY_REDEEMED, None
    coupon.redeemed_at = occurred
    coupon.order_id = order_pk
    return Redemption.REDEEMED, coupon
