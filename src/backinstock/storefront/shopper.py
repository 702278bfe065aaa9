"""The shopper's own page (``/s/{token}``): what a contact waits for, and stopping it.

The token names one subscription (the one whose message carried the link), signed for
the purpose ``shopper-page`` (:data:`backinstock.identity.SHOPPER_PAGE_TOKEN`), so it is
neither an unsubscribe, a click nor a confirmation token, and those are not it. The page
shows every subscription of that subscription's contact: its sealed contact is opened,
and the contact is looked up by blind index under every key of the ring, so requests
made on other pages, by other channels of the same address and before a key rotation
are all there. The token keeps the frozen 44-character format of every link in a message
(an SMS has room for no more) and holds no contact, not even its blind index.

What a shopper may stop is only what the page shows them: a subscription of another
contact is not stopped through this page, whatever id a form posts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import contacts, identity
from backinstock.catalog.models import Product
from backinstock.catalog.service import name_for, names_of, product_name
from backinstock.config import Settings
from backinstock.contacts import Channel, InvalidContact
from backinstock.crypto import DecryptionError, Keys
from backinstock.dispatch.models import Kind, Notification, SubstituteOffer
from backinstock.restocks import substitutes
from backinstock.restocks.substitutes import Substitute
from backinstock.subscriptions import service as subscriptions
from backinstock.subscriptions.models import ACTIVE, Status, Subscription

# More than any shopper waits for at once; the page lists the newest this many.
MAX_SHOWN = 200


@dataclass(frozen=True)
class Alert:
    """One thing the shopper waits for."""

    id: uuid.UUID
    sku: str
    product_name: str | None
    product_url: str | None
    status: Status
    position: int | None  # the place in line (a pending request's: once confirmed)
    channel: Channel
    created_at: datetime
    # While the product is sold out: its substitutes in stock now, in the order listed.
    substitutes: tuple[Substitute, ...] = ()
    # Those a substitute message offered this subscription: substitute SKU → (message,
    # place), so the page links them through that message's tracked link.
    offered: dict[str, tuple[uuid.UUID, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Shopper:
    """Whom a page token names: the contact (masked, and its blind-index candidates) of
    the subscription it was made for, and that subscription's locale."""

    subscription_id: uuid.UUID
    locale: str
    contact_masked: str | None  # None once the contact is erased
    candidates: tuple[bytes, ...]


async def shopper(
    session: AsyncSession, settings: Settings, keys: Keys, subscription_id: uuid.UUID
) -> Shopper | None:
    """The shopper a page token names, or None when its subscription no longer exists
    (erased by privacy erasure, or an unconfirmed request erased after its window)."""
    sub = await session.get(Subscription, subscription_id)
    if sub is None:
        return None
    channel = Channel(sub.channel)
    try:
        value = identity.open_contact(keys, sub.id, sub.contact_key_id, sub.contact_blob)
    except DecryptionError:
        value = None
    if value is None:  # erased by retention: nothing to show or stop
        return Shopper(sub.id, sub.locale, None, ())
    try:
        contact = identity.normalize(settings, channel, value)
    except InvalidContact:  # stored before a stricter rule: the row's own index still finds it
        fallback = (sub.contact_index,) if sub.contact_index else ()
        return Shopper(sub.id, sub.locale, contacts.mask(channel, value), fallback)
    return Shopper(
        sub.id,
        sub.locale,
        contacts.mask(channel, contact.value),
        tuple(identity.candidates(keys, contact)),
    )


async def alerts(session: AsyncSession, who: Shopper, locale: str) -> list[Alert]:
    """Everything the shopper waits for (pending, waiting or notified), oldest first, each
    product named in ``locale`` where a name in it (or its language) is known, with the
    substitutes in stock of those sold out (one statement for them all)."""
    if not who.candidates:
        return []
    rows = list(
        await session.scalars(
            select(Subscription)
            .where(
                Subscription.contact_index.in_(who.candidates),
                Subscription.status.in_(ACTIVE),
            )
            .order_by(Subscription.created_at.desc(), Subscription.id.desc())
            .limit(MAX_SHOWN)
        )
    )
    rows.reverse()
    skus = sorted({sub.sku for sub in rows})
    names = await names_of(session, skus)
    products = {
        product.sku: product
        for product in await session.scalars(select(Product).where(Product.sku.in_(skus)))
    }
    instead = await substitutes.shown_for(session, skus, locale)
    offered = await _offered(session, [sub.id for sub in rows])
    found = []
    for sub in rows:
        product = products.get(sub.sku)
        found.append(
            Alert(
                id=sub.id,
                sku=sub.sku,
                product_name=name_for(
                    locale, names.get(sub.sku, []), product.name if product else None
                ),
                product_url=product.url if product else None,
                status=Status(sub.status),
                position=await subscriptions.queue_position(session, sub),
                channel=Channel(sub.channel),
                created_at=sub.created_at,
                substitutes=tuple(instead.get(sub.sku, ())),
                offered=offered.get(sub.id, {}),
            )
        )
    return found


async def _offered(
    session: AsyncSession, subscription_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, tuple[uuid.UUID, int]]]:
    """What the substitute messages of these subscriptions offered (one statement)."""
    found: dict[uuid.UUID, dict[str, tuple[uuid.UUID, int]]] = {}
    if not subscription_ids:
        return found
    rows = await session.execute(
        select(
            Notification.subscription_id,
            SubstituteOffer.substitute_sku,
            SubstituteOffer.notification_id,
            SubstituteOffer.position,
        )
        .join(SubstituteOffer, SubstituteOffer.notification_id == Notification.id)
        .where(
            Notification.subscription_id.in_(subscription_ids),
            Notification.kind == Kind.SUBSTITUTE,
        )
    )
    for subscription_id, sku, notification_id, position in rows:
        found.setdefault(subscription_id, {})[sku] = (notification_id, position)
    return found


async def owns(session: AsyncSession, who: Shopper, subscription_id: uuid.UUID) -> bool:
    """Whether the subscription is one of the shopper's (stopped or not)."""
    if not who.candidates:
        return False
    found = await session.scalar(
        select(Subscription.id).where(
            Subscription.id == subscription_id,
            Subscription.contact_index.in_(who.candidates),
        )
    )
    return found is not None


async def stopped_name(
    session: AsyncSession, who: Shopper, subscription_id: uuid.UUID, locale: str
) -> str | None:
    """The product name of one of the shopper's subscriptions, if it is unsubscribed: what
    the page's notice says was stopped (never a subscription that still waits)."""
    if not who.candidates:
        return None
    sub = await session.scalar(
        select(Subscription).where(
            Subscription.id == subscription_id,
            Subscription.contact_index.in_(who.candidates),
        )
    )
    if sub is None or sub.status != Status.UNSUBSCRIBED.value:
        return None
    return await product_name(session, sub.sku, locale) or sub.sku


async def stop(session: AsyncSession, who: Shopper, subscription_id: uuid.UUID) -> bool:
    """Stop one of the shopper's subscriptions (a repeat changes nothing); False when it is
    not theirs."""
    if not await owns(session, who, subscription_id):
        return False
    return await subscriptions.unsubscribe(session, subscription_id)


async def stop_all(session: AsyncSession, who: Shopper) -> int:
    """Stop everything the shopper waits for; returns how many were stopped."""
    if not who.candidates:
        return 0
    return await subscriptions.unsubscribe_by_contact(session, list(who.candidates))
