"""The tracked link: ``/r/{token}`` counts the click and sends the shopper to the product.

The token is signed over the notification id, so only links we sent count, and the target
is the product URL we stored (checked against ALLOWED_LINK_HOSTS again, in case the list
shrank since): the link cannot be turned into an open redirect.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.catalog.models import Product
from backinstock.catalog.service import check_link
from backinstock.config import Settings
from backinstock.crypto import Keys
from backinstock.db import utcnow
from backinstock.dispatch import notifications
from backinstock.dispatch.models import Notification, SubstituteOffer
from backinstock.errors import InvalidField
from backinstock.identity import CLICK_TOKEN
from backinstock.ops import metrics
from backinstock.subscriptions.models import Subscription

TRACKING_PARAMS = ("utm_source", "utm_medium", "bis_token")


def tracked_url(product_url: str, channel: str, token: str) -> str:
    """The product URL with our tracking parameters (replacing any it already had)."""
    parts = urlsplit(product_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k not in TRACKING_PARAMS]
    query += [("utm_source", "backinstock"), ("utm_medium", channel), ("bis_token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def record_click(
    session: AsyncSession, settings: Settings, keys: Keys, token: str
) -> str | None:
    """Count the click; the URL to send the shopper to, or None for a link we did not send."""
    notification_id = keys.tokens.verify(CLICK_TOKEN, token)
    if notification_id is None:
        return None
    row = (
        await session.execute(
            select(Notification.channel, Subscription.channel, Product.url)
            .join(Subscription, Subscription.id == Notification.subscription_id)
            .outerjoin(Product, Product.sku == Notification.sku)
            .where(Notification.id == notification_id)
        )
    ).first()
    target = _target(settings, row, token)
    if target is not None:
        await notifications.record_click(session, notification_id, utcnow())
    return target


async def record_substitute_click(
    session: AsyncSession, settings: Settings, keys: Keys, token: str, position: int
) -> str | None:
    """Count the click on the substitute at ``position`` of a substitute message; the URL
    of that substitute (with the message's token, which an order of it carries back), or
    None for a link we did not send."""
    notification_id = keys.tokens.verify(CLICK_TOKEN, token)
    if notification_id is None:
        return None
    row = (
        await session.execute(
            select(Notification.channel, Subscription.channel, Product.url)
            .select_from(SubstituteOffer)
            .join(Notification, Notification.id == SubstituteOffer.notification_id)
            .join(Subscription, Subscription.id == Notification.subscription_id)
            .outerjoin(Product, Product.sku == SubstituteOffer.substitute_sku)
            .where(
                SubstituteOffer.notification_id == notification_id,
                SubstituteOffer.position == position,
            )
        )
    ).first()
    target = _target(settings, row, token)
    if target is not None:
        await notifications.record_substitute_click(session, notification_id, position, utcnow())
    return target


def _target(
    settings: Settings, row: Row[str | None, str, str | None] | None, token: str
) -> str | None:
    """The tracked URL of a row (message channel, subscription channel, product URL), or
    None when there is none or its host is no longer allowed; counted in the metrics."""
    if row is None or row.url is None:
        return None
    try:
        check_link(settings.core, "product.url", row.url)
    except InvalidField:
        return None
    channel = row[0] or row[1]
    metrics.CLICKS.labels(channel).inc()
    return tracked_url(row.url, channel, token)
