"""Data minimisation: what a stopped subscription no longer needs is erased.

Two steps, run by every worker's sweeper about once a minute, in small batches:

* **Expiry.** A subscription that has had its ``MAX_NOTIFICATIONS`` messages can never be
  told again. Once its last message is older than the attribution window (so an order can no
  longer convert it) it becomes ``expired`` and leaves the queue and the "waiting" figures.
* **Unconfirmed requests.** A subscription still ``pending`` (double opt-in) after
  ``CONFIRM_WINDOW_SECONDS`` is erased, row and all, with its confirmation messages: it never
  became a subscription. Confirmation turns older than a day are forgotten too.
* **Erasure.** ``RETENTION_DAYS`` after a subscription stopped waiting (converted,
  unsubscribed, expired), its contacts, name and consent IP are erased: ciphertext and blind
  index set to NULL, fallback contacts too, and its dev-outbox copies deleted. The row stays,
  contact-free, so the figures (funnel, demand, revenue) keep counting it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.config import Settings
from backinstock.dispatch import notifications
from backinstock.dispatch.models import Notification
from backinstock.senders import outbox
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.models import STOPPED, Status, Subscription

# The partial indexes subscriptions.ix_subscriptions_expiry / _erasure cover these scans.
BATCH = 500


async def expire_exhausted(session: AsyncSession, settings: Settings, now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.conversion.attribution_window_seconds)
    ids = list(
        await session.scalars(
            select(Subscription.id)
            .where(
                Subscription.status == Status.NOTIFIED.value,
                Subscription.notification_count >= settings.waves.max_notifications,
                Subscription.last_notified_at < cutoff,
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        await lifecycle.expire(session, ids, now)
    return len(ids)


async def erase_stopped(session: AsyncSession, settings: Settings, now: datetime) -> int:
    cutoff = now - timedelta(days=settings.conversion.retention_days)
    ids = list(
        await session.scalars(
            select(Subscription.id)
            .where(
                Subscription.status.in_(STOPPED),
                Subscription.contact_blob.is_not(None),
                Subscription.stopped_at < cutoff,
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if ids:
        await _erase(session, ids, now)
    return len(ids)


async def _erase(session: AsyncSession, ids: list[uuid.UUID], now: datetime) -> None:
    await lifecycle.erase(session, ids, now)
    await outbox.forget(
        session, select(Notification.id).where(Notification.subscription_id.in_(ids))
    )


async def discard_unconfirmed(session: AsyncSession, settings: Settings, now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.opt_in.confirm_window_seconds)
    ids = list(
        await session.scalars(
            select(Subscription.id)
            .where(Subscription.status == Status.PENDING.value, Subscription.created_at < cutoff)
            .limit(BATCH)
            # NO KEY: a worker sending one of these confirmations re-checks the key of its
            # subscription; a full lock here would deadlock with it (see lifecycle.discard).
            .with_for_update(skip_locked=True, key_share=True)
        )
    )
    if ids:
        await outbox.forget(
            session, select(Notification.id).where(Notification.subscription_id.in_(ids))
        )
        await lifecycle.discard(session, ids)
    await notifications.forget_confirmation_turns(session, now)
    return len(ids)
