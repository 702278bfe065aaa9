"""Every domain's tables, imported once so that ``Base.metadata`` is complete."""

from backinstock.auth.models import ApiKey
from backinstock.catalog.models import Product, ProductName, ProductPolicy
from backinstock.conversions.models import Conversion, Order, SubstituteSale
from backinstock.coupons.models import Coupon, CouponPool
from backinstock.dashboard.models import DashboardSession
from backinstock.db import Base
from backinstock.dispatch.models import ConfirmationSent, Notification, SubstituteOffer
from backinstock.restocks.models import RestockEvent, StockHold, StockLevel, Wave
from backinstock.senders.models import DevOutboxMessage
from backinstock.subscriptions.models import QueueCount, Subscription, SubscriptionFallback

__all__ = [
    "ApiKey",
    "Base",
    "ConfirmationSent",
    "Conversion",
    "Coupon",
    "CouponPool",
    "DashboardSession",
    "DevOutboxMessage",
    "Notification",
    "Order",
    "Product",
    "ProductName",
    "ProductPolicy",
    "QueueCount",
    "RestockEvent",
    "StockHold",
    "StockLevel",
    "Subscription",
    "SubscriptionFallback",
    "SubstituteOffer",
    "SubstituteSale",
    "Wave",
]
