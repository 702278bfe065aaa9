"""Every domain's tables, imported once so that ``Base.metadata`` is complete."""

from backinstock.auth.models import ApiKey
from backinstock.catalog.models import Product
from backinstock.db import Base
from backinstock.dispatch.models import DevOutboxMessage, Notification
from backinstock.restocks.models import RestockEvent, StockLevel, Wave
from backinstock.subscriptions.models import Subscription, SubscriptionFallback

__all__ = [
    "ApiKey",
    "Base",
    "DevOutboxMessage",
    "Notification",
    "Product",
    "RestockEvent",
    "StockLevel",
    "Subscription",
    "SubscriptionFallback",
    "Wave",
]
