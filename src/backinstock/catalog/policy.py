"""A product's own rules (``product_policies``, which this package alone writes): settings
overridden for one SKU.

A rule is named by the setting it overrides, in lower case. Its effective value for a SKU is
the SKU's override if it has one, else the setting. Whatever applies a rule reads it here, at
the moment it applies it, so a change takes effect from the next time: the next wave step
(its size and the time of the one after it), the next chunk's holds, the next restock's
answer, the next follow-up decision, the next sell-out's compensation, the next
substitute offer, the next subscription.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from backinstock.catalog.models import ProductPolicy
from backinstock.catalog.schemas import (
    ChannelsRule,
    CompensationRule,
    EffectivePolicy,
    NumberRule,
    PolicyIn,
    PolicyOut,
    SecondsRule,
    Source,
)
from backinstock.catalog.service import ProductInfo, upsert_product
from backinstock.config import Settings, SoldoutCompensation
from backinstock.contacts import Channel
from backinstock.db import insert_for, one_of

# The rules, by name: those a PUT, the CLI and GET know.
NAMES: tuple[str, ...] = tuple(PolicyIn.model_fields)


@dataclass(frozen=True)
class Policy:
    """A SKU's effective rules."""

    batch_multiplier: float
    batch_interval_seconds: float
    hold_seconds: int
    followup_after_seconds: int
    soldout_compensation: SoldoutCompensation
    substitute_after_seconds: int
    channels: tuple[Channel, ...]
    overridden: frozenset[str] = field(default_factory=frozenset)
    updated_at: datetime | None = None


def from_settings(settings: Settings) -> Policy:
    """The rules of a SKU without overrides."""
    return Policy(
        batch_multiplier=settings.waves.batch_multiplier,
        batch_interval_seconds=settings.waves.batch_interval_seconds,
        hold_seconds=settings.waves.hold_seconds,
        followup_after_seconds=settings.conversion.followup_after_seconds,
        soldout_compensation=settings.conversion.soldout_compensation,
        substitute_after_seconds=settings.conversion.substitute_after_seconds,
        channels=tuple(Channel),
    )


_COLUMNS = (
    ProductPolicy.batch_multiplier,
    ProductPolicy.batch_interval_seconds,
    ProductPolicy.hold_seconds,
    ProductPolicy.followup_after_seconds,
    ProductPolicy.soldout_compensation,
    ProductPolicy.substitute_after_seconds,
    ProductPolicy.channels,
    ProductPolicy.updated_at,
)
_OVERRIDES = select(*_COLUMNS).where(ProductPolicy.sku == bindparam("sku"))
_CHANNELS = select(ProductPolicy.channels).where(ProductPolicy.sku == bindparam("sku"))


def _channels(stored: str) -> tuple[Channel, ...]:
    return tuple(Channel(name) for name in stored.split(","))


def _stored_channels(channels: Sequence[Channel] | None) -> str | None:
    """Stored in the order of :class:`Channel`, whatever order they were given in."""
    if channels is None:
        return None
    return ",".join(channel.value for channel in Channel if channel in channels)


async def overrides(session: AsyncSession, sku: str) -> dict[str, Any]:
    """The SKU's overrides as a body of ``PUT …/policy`` would give them (JSON values)."""
    row = (await session.execute(_OVERRIDES, {"sku": sku})).first()
    if row is None:
        return {}
    values: dict[str, Any] = dict(zip(NAMES, tuple(row)[: len(NAMES)], strict=True))
    if values["channels"] is not None:
        values["channels"] = [channel.value for channel in _channels(values["channels"])]
    return {name: value for name, value in values.items() if value is not None}


async def effective(session: AsyncSession, settings: Settings, sku: str) -> Policy:
    """The SKU's rules now: its overrides over the settings."""
    base = from_settings(settings)
    row = (await session.execute(_OVERRIDES, {"sku": sku})).first()
    return base if row is None else _over(base, tuple(row))


async def effective_many(
    session: AsyncSession, settings: Settings, skus: Sequence[str]
) -> dict[str, Policy]:
    """The rules of each of ``skus`` now, in one query."""
    base = from_settings(settings)
    rules = dict.fromkeys(skus, base)
    rows = await session.execute(
        select(ProductPolicy.sku, *_COLUMNS).where(one_of(session, ProductPolicy.sku, skus))
    )
    for sku, *row in rows:
        rules[sku] = _over(base, tuple(row))
    return rules


def _over(base: Policy, row: tuple[Any, ...]) -> Policy:
    """A SKU's overrides (a row of :data:`_COLUMNS`) over the settings' rules."""
    multiplier, interval, hold, followup, compensation, substitute, channels, updated_at = row
    return Policy(
        batch_multiplier=base.batch_multiplier if multiplier is None else multiplier,
        batch_interval_seconds=base.batch_interval_seconds if interval is None else interval,
        hold_seconds=base.hold_seconds if hold is None else hold,
        followup_after_seconds=base.followup_after_seconds if followup is None else followup,
        soldout_compensation=(
            base.soldout_compensation if compensation is None else SoldoutCompensation(compensation)
        ),
        substitute_after_seconds=(
            base.substitute_after_seconds if substitute is None else substitute
        ),
        channels=base.channels if channels is None else _channels(channels),
        overridden=frozenset(
            name
            for name, value in zip(
                NAMES,
                (multiplier, interval, hold, followup, compensation, substitute, channels),
                strict=True,
            )
            if value is not None
        ),
        updated_at=updated_at,
    )


async def allowed_channels(session: AsyncSession, sku: str) -> tuple[Channel, ...] | None:
    """The channels a subscription to the SKU may use; None: any (no override)."""
    stored = await session.scalar(_CHANNELS, {"sku": sku})
    return None if stored is None else _channels(stored)


async def replace(session: AsyncSession, sku: str, rules: PolicyIn, now: datetime) -> None:
    """The SKU's overrides become ``rules``: a rule it leaves out has none. The product row
    is made if the SKU is new (rules may be set before anyone waits for it)."""
    await upsert_product(session, sku, ProductInfo())
    values = {
        "batch_multiplier": rules.batch_multiplier,
        "batch_interval_seconds": rules.batch_interval_seconds,
        "hold_seconds": rules.hold_seconds,
        "followup_after_seconds": rules.followup_after_seconds,
        "soldout_compensation": (
            None if rules.soldout_compensation is None else rules.soldout_compensation.value
        ),
        "substitute_after_seconds": rules.substitute_after_seconds,
        "channels": _stored_channels(rules.channels),
        "updated_at": now,
    }
    stmt = insert_for(session, ProductPolicy).values(sku=sku, **values)
    await session.execute(
        stmt.on_conflict_do_update(index_elements=[ProductPolicy.sku], set_=values)
    )


def present(sku: str, policy: Policy) -> PolicyOut:
    def source(name: str) -> Source:
        return Source.PRODUCT if name in policy.overridden else Source.SETTINGS

    return PolicyOut(
        sku=sku,
        policy=EffectivePolicy(
            batch_multiplier=NumberRule(
                value=policy.batch_multiplier, source=source("batch_multiplier")
            ),
            batch_interval_seconds=NumberRule(
                value=policy.batch_interval_seconds, source=source("batch_interval_seconds")
            ),
            hold_seconds=SecondsRule(value=policy.hold_seconds, source=source("hold_seconds")),
            followup_after_seconds=SecondsRule(
                value=policy.followup_after_seconds, source=source("followup_after_seconds")
            ),
            soldout_compensation=CompensationRule(
                value=policy.soldout_compensation, source=source("soldout_compensation")
            ),
            substitute_after_seconds=SecondsRule(
                value=policy.substitute_after_seconds, source=source("substitute_after_seconds")
            ),
            channels=ChannelsRule(value=list(policy.channels), source=source("channels")),
        ),
        updated_at=policy.updated_at,
    )


async def show(session: AsyncSession, settings: Settings, sku: str) -> PolicyOut:
    """What ``GET …/policy`` answers: every rule's effective value and its source."""
    return present(sku, await effective(session, settings, sku))


# ------------------------------------------------------------------- set-based statements
def followup_after(settings: Settings) -> ColumnElement[int]:
    """The follow-up delay of each row of a statement joined (outer) to ``product_policies``
    by SKU: the SKU's own, else the setting."""
    delay = func.coalesce(
        ProductPolicy.followup_after_seconds, settings.conversion.followup_after_seconds
    )
    return type_coerce(delay, Integer)


async def shortest_followup(session: AsyncSession, settings: Settings) -> int:
    """The shortest follow-up delay of any SKU: no message sent since that long ago is due,
    which bounds the follow-ups' index scan."""
    own = await session.scalar(select(func.min(ProductPolicy.followup_after_seconds)))
    default = settings.conversion.followup_after_seconds
    return default if own is None else min(default, int(own))


async def substitutes_wanted(session: AsyncSession, settings: Settings) -> bool:
    """Whether any SKU may have a substitute message: the setting, or a SKU's own rule."""
    if settings.conversion.substitute_after_seconds > 0:
        return True
    own = select(ProductPolicy.sku).where(ProductPolicy.substitute_after_seconds > 0).limit(1)
    return await session.scalar(own) is not None
