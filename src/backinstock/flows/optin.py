"""A shopper asks to be told: the subscription is made, and if it must wait for its
shopper to confirm (double opt-in), the "please confirm" message is planned.

A subscription made with a publishable key (from a web page), or on a channel listed in
DOUBLE_OPT_IN_CHANNELS, starts ``pending`` (subscriptions) and takes its place in the queue
only when the shopper confirms, by the link in the confirmation message or, for SMS, by
replying its code. The confirmation is an outbox row like every message (dispatch, kind
``confirmation``), so it is claimed, sent, retried and recovered the same way. A contact
gets at most one confirmation per SKU a day (``dispatch.notifications.take_confirmation_turn``):
asking again the same day repeats the answer, not the message. A WeChat subscription is
confirmed by the mini-program's own consent and never waits.

While the SKU is sold out, the answer names its substitutes in stock (restocks, reading
catalog's list), in the shopper's locale.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.service import ProductCache
from backinstock.config import Settings
from backinstock.crypto import Keys
from backinstock.dispatch import notifications
from backinstock.ratelimit import RateLimiter
from backinstock.restocks import substitutes
from backinstock.restocks.substitutes import Substitute
from backinstock.subscriptions import service as subscriptions
from backinstock.subscriptions.models import Status
from backinstock.subscriptions.schemas import SubscriptionCreate, SubscriptionOut
from backinstock.subscriptions.service import Terms


@dataclass(frozen=True)
class Requested:
    out: SubscriptionOut
    created: bool
    confirmation: uuid.UUID | None  # the confirmation message planned, to wake a sender for
    substitutes: list[Substitute]  # in stock, while the SKU is sold out


async def subscribe(
    session: AsyncSession,
    settings: Settings,
    keys: Keys,
    limiter: RateLimiter,
    products: ProductCache,
    payload: SubscriptionCreate,
    *,
    client: str,
    terms: Terms,
    now: datetime,
) -> Requested:
    """Subscribe (or repeat a subscription), then plan a confirmation for a pending one
    whose contact has not had one for this SKU today; name the substitutes in stock."""
    made = await subscriptions.subscribe(
        session, settings, keys, limiter, products, payload, client, terms, now
    )
    confirmation = None
    if made.out.status is Status.PENDING and await notifications.take_confirmation_turn(
        session, made.out.sku, made.contact_index, now
    ):
        confirmation = await notifications.plan_confirmation(
            session, made.out.id, made.out.sku, made.out.channel.value, now
        )
    shown = (
        await substitutes.shown(session, made.out.sku, payload.locale)
        if made.may_have_substitutes
        else []
    )
    return Requested(made.out, made.created, confirmation, shown)
