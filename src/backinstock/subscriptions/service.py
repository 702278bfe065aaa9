"""Subscribing, reading, unsubscribing and erasing shoppers' subscriptions.

Contacts are sealed before they reach the database and opened only to mask them for a
response (or, later, to send); lookups go through the blind index.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from backinstock import contacts, identity
from backinstock.catalog import policy as product_policy
from backinstock.catalog import service as catalog
from backinstock.config import Rate, Settings
from backinstock.contacts import Channel, InvalidContact
from backinstock.crypto import Keys, Sealed
from backinstock.db import new_id, utcnow
from backinstock.errors import Conflict, InvalidField, RateLimited
from backinstock.identity import NormalizedContact, contact_aad, open_contact, profile_aad
from backinstock.ratelimit import Counted, Hit, RateLimiter
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions.attributes import segment_of
from backinstock.subscriptions.models import (
    ACTIVE,
    PRIORITY_RANK,
    FallbackStatus,
    Status,
    Subscription,
    SubscriptionFallback,
)
from backinstock.subscriptions.schemas import (
    FallbackOut,
    SubscriptionCreate,
    SubscriptionOut,
)
from backinstock.subscriptions.statements import COUNT_AHEAD, INSERT_SUBSCRIPTION_ON_DRIVER


def normalize_contact(
    settings: Settings, field: str, channel: Channel, raw: str
) -> NormalizedContact:
    try:
        return identity.normalize(settings, channel, raw)
    except InvalidContact as exc:
        raise InvalidField(field, f"{exc} for channel '{channel.value}'") from None


def _normalized_fallbacks(
    settings: Settings, payload: SubscriptionCreate, primary: NormalizedContact
) -> list[NormalizedContact]:
    result: list[NormalizedContact] = []
    for i, fallback in enumerate(payload.fallbacks):
        contact = normalize_contact(
            settings, f"fallbacks.{i}.contact", fallback.channel, fallback.contact
        )
        if contact.index_form in {primary.index_form, *(c.index_form for c in result)}:
            raise InvalidField(f"fallbacks.{i}.contact", "repeats another contact")
        result.append(contact)
    return result


async def _check_channels(session: AsyncSession, payload: SubscriptionCreate) -> None:
    """Refuse a channel the product's policy does not take, primary or fallback."""
    allowed = await product_policy.allowed_channels(session, payload.sku)
    if allowed is None:
        return
    rule = "this product takes subscriptions on " + ", ".join(c.value for c in allowed) + " only"
    if payload.channel not in allowed:
        raise InvalidField("channel", rule)
    for i, fallback in enumerate(payload.fallbacks):
        if fallback.channel not in allowed:
            raise InvalidField(f"fallbacks.{i}.channel", rule)


@dataclass(frozen=True)
class Terms:
    """What the key that made a request allows it."""

    # New subscriptions wait for their shopper to confirm (double opt-in).
    pending: bool = False
    # The rate limits per client and per contact (None: that limit is off).
    per_client: Rate | None = None
    per_contact: Rate | None = None
    # Product information overwrites what is known (False: it only fills gaps).
    overwrite_product: bool = True
    # The consent IP recorded, instead of the payload's (a browser cannot know its own).
    consent_ip: str | None = None

    @classmethod
    def secret(cls, settings: Settings, channel: Channel) -> Terms:
        """A secret key's: its channel may need confirming too (DOUBLE_OPT_IN_CHANNELS)."""
        limits = settings.rate_limits
        return cls(
            pending=needs_confirmation(settings, channel, publishable=False),
            per_client=limits.per_ip,
            per_contact=limits.per_contact,
        )

    @classmethod
    def publishable(cls, settings: Settings, channel: Channel, client_ip: str) -> Terms:
        """A publishable key's (a browser's): confirmed by the shopper (WeChat: by the
        mini-program's consent), counted under the tighter limits, and only filling gaps in
        what is known of the product."""
        limits = settings.rate_limits
        return cls(
            pending=needs_confirmation(settings, channel, publishable=True),
            per_client=limits.publishable_per_ip,
            per_contact=limits.publishable_per_contact,
            overwrite_product=False,
            consent_ip=client_ip,
        )


def needs_confirmation(settings: Settings, channel: Channel, *, publishable: bool) -> bool:
    """Whether a new subscription waits for its shopper to confirm. A WeChat subscription
    never does: the mini-program's own consent (wx.requestSubscribeMessage) confirms it."""
    if channel is Channel.WECHAT:
        return False
    return publishable or channel.value in settings.opt_in.double_opt_in_channels


@dataclass(frozen=True)
class Subscribed:
    out: SubscriptionOut
    created: bool
    contact_index: bytes  # the primary contact's blind index (newest key)
    may_have_substitutes: bool = True  # False: the product has none (known from the INSERT)


async def subscribe(
    session: AsyncSession,
    settings: Settings,
    keys: Keys,
    limiter: RateLimiter,
    products: catalog.ProductCache,
    payload: SubscriptionCreate,
    client: str,
    terms: Terms | None = None,
    now: datetime | None = None,
) -> Subscribed:
    """Create the subscription, or return the pending or waiting one for the same SKU and
    contact.

    ``client`` names the caller for the per-client rate limit. The contact rate limit
    counts every contact the subscription may message (the primary and each fallback: a
    fallback number would otherwise be an SMS-pumping path), and only creations: repeating
    a request is free and idempotent. All limits cost one Redis call, and a new
    subscription one INSERT (whose ON CONFLICT does the dedupe and whose RETURNING brings
    its queue position). A repeat that needs no confirmation confirms a pending request
    (a secret key vouches for its shopper); a pending request older than the confirmation
    window is gone, and the repeat starts a new one. ``now``: the clock's time (for the
    window).
    """
    terms = terms or Terms.secret(settings, payload.channel)
    now = now or utcnow()
    try:
        primary = normalize_contact(settings, "contact", payload.channel, payload.contact)
        fallbacks = _normalized_fallbacks(settings, payload, primary)
        given = payload.product
        product = (
            catalog.ProductInfo(given.name, given.url, given.image_url, payload.locale)
            if given
            else catalog.ProductInfo()
        )
        catalog.check_product(settings.core, product)
        if payload.fallbacks:  # the primary channel alone is checked by the INSERT
            await _check_channels(session, payload)
    except InvalidField:
        await _check_limits(terms, limiter, client, [])  # invalid requests count too
        raise

    candidates = identity.candidates(keys, primary)
    indexes = [candidates[0], *(identity.index(keys, f) for f in fallbacks)]
    contact_counter = await _check_limits(terms, limiter, client, indexes)
    new = _NewSubscription.build(keys, payload, primary, candidates[0], terms, now)
    # When nothing after the INSERT could undo it (the contact under its limit, no fallback
    # to add, no confirmation to plan, the product's details written lately), it commits on
    # its own: one round trip, not BEGIN, INSERT and COMMIT. Otherwise, and for whatever a
    # repeat then does, the transaction as usual.
    alone = (
        contact_counter.retry_after is None
        and not fallbacks
        and not terms.pending
        and products.known(payload.sku, product, overwrite=terms.overwrite_product)
    )
    inserted = await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, new.params, alone=alone)
    if inserted is None and not payload.fallbacks:  # a repeat, or a channel refused
        await _refuse_channel(session, payload, limiter, contact_counter)
    existing: Subscription | None = None
    if inserted is None:  # already there, under this or an older index key
        existing = await _active_for_contact(session, payload.sku, candidates)
        if existing is not None and _unconfirmed_too_long(settings, existing, now):
            await lifecycle.discard(session, [existing.id])  # as retention would have
            inserted = await INSERT_SUBSCRIPTION_ON_DRIVER.first(session, new.params)
            if inserted is None:  # a concurrent request made it meanwhile
                existing = await _active_for_contact(session, payload.sku, candidates)
    if inserted is None:
        for counter in contact_counter.counters:  # a repeat is free
            await limiter.take_back(counter)
        if existing is None:  # stopped waiting between the two statements: a rare race
            raise Conflict("The subscription changed meanwhile; retry the request.")
        if existing.status == Status.PENDING and not terms.pending:
            await lifecycle.confirm(session, [existing.id], now, _window_start(settings, now))
            existing = await _load(session, existing.id) or existing
        return Subscribed(await _present(session, keys, existing), False, candidates[0])

    if contact_counter.retry_after is not None:
        raise RateLimited(
            "Too many subscriptions for this contact; try again later.",
            contact_counter.retry_after,
        )
    if not product.is_empty():
        await products.upsert(session, payload.sku, product, overwrite=terms.overwrite_product)
    out = new.present(fallbacks)
    if fallbacks:
        _add_fallbacks(session, keys, new.id, fallbacks)
        await session.flush()
    out.position = int(inserted["ahead"]) + 1
    return Subscribed(out, True, candidates[0], bool(inserted["substitutes"]))


async def _refuse_channel(
    session: AsyncSession,
    payload: SubscriptionCreate,
    limiter: RateLimiter,
    contact_counter: _ContactCount,
) -> None:
    """Refuse (422) a channel the product's rule does not take, as :func:`_check_channels`
    would have before the limits: the contacts' counts are taken back (the client's
    stays: invalid requests count)."""
    try:
        await _check_channels(session, payload)
    except InvalidField:
        for counter in contact_counter.counters:
            await limiter.take_back(counter)
        raise


def _window_start(settings: Settings, now: datetime) -> datetime:
    """Pending requests made before this are past their confirmation window."""
    return now - timedelta(seconds=settings.opt_in.confirm_window_seconds)


def _unconfirmed_too_long(settings: Settings, sub: Subscription, now: datetime) -> bool:
    return sub.status == Status.PENDING and sub.created_at < _window_start(settings, now)


@dataclass(frozen=True)
class _ContactCount:
    counters: tuple[Counted, ...]  # the window counters incremented for the contacts
    retry_after: int | None  # set when a contact is over its limit


async def _check_limits(
    terms: Terms, limiter: RateLimiter, client: str, indexes: list[bytes]
) -> _ContactCount:
    """Count the client and (given their blind indexes) the contacts in one call. An
    over-limit client is refused here; an over-limit contact only once the request proves
    to be a creation, which the caller knows after the INSERT."""
    per_client, per_contact = terms.per_client, terms.per_contact
    hits = [Hit(client, per_client)] if per_client is not None else []
    first_contact = len(hits)
    if per_contact is not None:
        hits += [Hit("contact:" + index.hex(), per_contact) for index in indexes]
    if not hits:
        return _ContactCount((), None)
    verdict = await limiter.hit_all(hits)
    if verdict.refused is not None and verdict.refused < first_contact:
        raise RateLimited("Too many requests from this client; slow down.", verdict.retry_after)
    refused = verdict.refused is not None
    return _ContactCount(verdict.counters[first_contact:], verdict.retry_after if refused else None)


@dataclass(frozen=True)
class _NewSubscription:
    id: uuid.UUID
    rank: int
    created_at: datetime
    params: dict[str, Any]
    payload: SubscriptionCreate
    primary: NormalizedContact

    @classmethod
    def build(
        cls,
        keys: Keys,
        payload: SubscriptionCreate,
        primary: NormalizedContact,
        index: bytes,
        terms: Terms | None = None,
        now: datetime | None = None,
    ) -> _NewSubscription:
        terms = terms or Terms()
        sub_id, now = new_id(), now or utcnow()
        sealed = keys.cipher.seal(primary.value, contact_aad(sub_id))
        profile = _seal_profile(keys, sub_id, payload, terms.consent_ip)
        rank = PRIORITY_RANK[payload.priority]
        params = {
            "id": sub_id,
            "sku": payload.sku,
            "channel": primary.channel.value,
            "contact_key_id": sealed.key_id,
            "contact_blob": sealed.blob,
            "contact_index": index,
            "profile_key_id": profile.key_id if profile else None,
            "profile_blob": profile.blob if profile else None,
            "locale": payload.locale,
            "timezone": payload.timezone,
            "customer_id": payload.customer_id,
            "priority": payload.priority.value,
            "priority_rank": rank,
            "source": payload.source,
            "consent_text_version": payload.consent.text_version if payload.consent else None,
            "wechat_consents": payload.consent.wechat_messages if payload.consent else 1,
            # NULL, not {}, when there are none: most subscriptions carry none.
            "attributes": payload.attributes or None,
            "segment": segment_of(payload.attributes),
            "status": (Status.PENDING if terms.pending else Status.WAITING).value,
            "created_at": now,
        }
        return cls(sub_id, rank, now, params, payload, primary)

    def present(self, fallbacks: list[NormalizedContact]) -> SubscriptionOut:
        """The response, from what was just written: no re-read, no decryption."""
        return SubscriptionOut(
            id=self.id,
            sku=self.payload.sku,
            channel=self.primary.channel,
            contact_masked=contacts.mask(self.primary.channel, self.primary.value),
            fallbacks=[
                FallbackOut(channel=f.channel, contact_masked=contacts.mask(f.channel, f.value))
                for f in fallbacks
            ],
            status=Status(self.params["status"]),
            position=None,
            priority=self.payload.priority,
            locale=self.payload.locale,
            timezone=self.payload.timezone,
            customer_id=self.payload.customer_id,
            source=self.payload.source,
            attributes=self.payload.attributes,
            notification_count=0,
            created_at=self.created_at,
            updated_at=self.created_at,
        )


async def _count_ahead(
    session: AsyncSession, sku: str, rank: int, created_at: datetime, sub_id: uuid.UUID
) -> int:
    params = {"sku": sku, "priority_rank": rank, "created_at": created_at, "id": sub_id}
    return int(await session.scalar(COUNT_AHEAD, params) or 0)


def _seal_profile(
    keys: Keys, sub_id: uuid.UUID, payload: SubscriptionCreate, consent_ip: str | None = None
) -> Sealed | None:
    given = str(payload.consent.ip) if payload.consent and payload.consent.ip else None
    profile = {"name": payload.name, "consent_ip": consent_ip or given}
    if not any(profile.values()):
        return None
    return keys.cipher.seal(json.dumps(profile, ensure_ascii=False), profile_aad(sub_id))


def _add_fallbacks(
    session: AsyncSession, keys: Keys, sub_id: uuid.UUID, fallbacks: list[NormalizedContact]
) -> None:
    for rank, contact in enumerate(fallbacks, start=1):
        row_id = new_id()
        sealed = keys.cipher.seal(contact.value, contact_aad(row_id))
        session.add(
            SubscriptionFallback(
                id=row_id,
                subscription_id=sub_id,
                rank=rank,
                channel=contact.channel.value,
                contact_key_id=sealed.key_id,
                contact_blob=sealed.blob,
                contact_index=identity.index(keys, contact),
                status=FallbackStatus.ACTIVE.value,
            )
        )


async def _active_for_contact(
    session: AsyncSession, sku: str, candidates: list[bytes]
) -> Subscription | None:
    stmt = (
        select(Subscription)
        .where(
            Subscription.sku == sku,
            Subscription.contact_index.in_(candidates),
            Subscription.status.in_(ACTIVE),
        )
        .options(selectinload(Subscription.fallbacks))
    )
    return await session.scalar(stmt)


async def _load(session: AsyncSession, sub_id: uuid.UUID) -> Subscription | None:
    stmt = (
        select(Subscription)
        .where(Subscription.id == sub_id)
        .options(selectinload(Subscription.fallbacks))
        .execution_options(populate_existing=True)
    )
    return await session.scalar(stmt)


async def queue_position(session: AsyncSession, sub: Subscription) -> int | None:
    """1-based place in the SKU's queue: VIPs first, then registration order. A pending
    subscription's is the place it takes once confirmed (it keeps its registration time)."""
    if sub.status not in ACTIVE:
        return None
    return await _count_ahead(session, sub.sku, sub.priority_rank, sub.created_at, sub.id) + 1


def _masked(
    keys: Keys, channel: str, row_id: uuid.UUID, key_id: str | None, blob: bytes | None
) -> str | None:
    value = open_contact(keys, row_id, key_id, blob)
    return contacts.mask(Channel(channel), value) if value is not None else None


async def _present(session: AsyncSession, keys: Keys, sub: Subscription) -> SubscriptionOut:
    return SubscriptionOut(
        id=sub.id,
        sku=sub.sku,
        channel=Channel(sub.channel),
        contact_masked=_masked(keys, sub.channel, sub.id, sub.contact_key_id, sub.contact_blob),
        fallbacks=[
            FallbackOut(
                channel=Channel(f.channel),
                contact_masked=_masked(keys, f.channel, f.id, f.contact_key_id, f.contact_blob),
            )
            for f in sub.fallbacks
        ],
        status=Status(sub.status),
        position=await queue_position(session, sub),
        priority=sub.priority,
        locale=sub.locale,
        timezone=sub.timezone,
        customer_id=sub.customer_id,
        source=sub.source,
        attributes=sub.attributes or {},
        notification_count=sub.notification_count,
        created_at=sub.created_at,
        updated_at=sub.updated_at,
    )


def parse_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


async def get(session: AsyncSession, keys: Keys, sub_id: uuid.UUID) -> SubscriptionOut | None:
    sub = await _load(session, sub_id)
    return await _present(session, keys, sub) if sub else None


async def unsubscribe(session: AsyncSession, sub_id: uuid.UUID) -> bool:
    """Stop a subscription waiting (or a request waiting for confirmation); False when
    there is no such subscription."""
    sub = await session.get(Subscription, sub_id)
    if sub is None:
        return False
    if sub.status in ACTIVE:
        now = utcnow()
        sub.status, sub.stopped_at, sub.updated_at = Status.UNSUBSCRIBED.value, now, now
    return True


async def unsubscribe_by_contact(session: AsyncSession, candidates: list[bytes]) -> int:
    """Every subscription of a contact stops waiting, pending ones too (an SMS 'STOP')."""
    now = utcnow()
    result = await session.execute(
        update(Subscription)
        .where(Subscription.contact_index.in_(candidates), Subscription.status.in_(ACTIVE))
        .values(status=Status.UNSUBSCRIBED.value, stopped_at=now, updated_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_by_contact(session: AsyncSession, candidates: list[bytes]) -> int:
    """Delete every subscription the contact is the primary or a fallback contact of."""
    via_fallback = select(SubscriptionFallback.subscription_id).where(
        SubscriptionFallback.contact_index.in_(candidates)
    )
    ids = set(
        await session.scalars(
            select(Subscription.id).where(
                Subscription.contact_index.in_(candidates) | Subscription.id.in_(via_fallback)
            )
        )
    )
    if not ids:
        return 0
    await session.execute(
        delete(SubscriptionFallback).where(SubscriptionFallback.subscription_id.in_(ids))
    )
    await session.execute(delete(Subscription).where(Subscription.id.in_(ids)))
    return len(ids)


@dataclass(frozen=True)
class Confirmation:
    """What confirming a subscription came to."""

    status: Status | None  # None: no such subscription (expired and erased, or never)
    position: int | None
    confirmed_now: bool


async def confirm(
    session: AsyncSession, settings: Settings, sub_id: uuid.UUID, now: datetime
) -> Confirmation:
    """The shopper confirmed their request (double opt-in): within the confirmation window
    it takes its place in the queue, the one its registration time gives it. Confirming
    twice changes nothing; a request past its window stays pending until retention erases
    it, and cannot be confirmed."""
    done = await lifecycle.confirm(session, [sub_id], now, _window_start(settings, now))
    sub = await _load(session, sub_id)
    if sub is None:
        return Confirmation(None, None, False)
    return Confirmation(Status(sub.status), await queue_position(session, sub), bool(done))


async def pending_for_contact(
    session: AsyncSession, candidates: list[bytes], channel: Channel
) -> list[uuid.UUID]:
    """The contact's requests still waiting for confirmation on ``channel``."""
    return list(
        await session.scalars(
            select(Subscription.id).where(
                Subscription.contact_index.in_(candidates),
                Subscription.channel == channel.value,
                Subscription.status == Status.PENDING.value,
            )
        )
    )
