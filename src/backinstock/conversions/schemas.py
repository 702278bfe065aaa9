from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, model_validator

from backinstock.fields import (
    INSTANT_RULE,
    DecimalString,
    Instant,
    RequestBody,
    StrictInt,
    Text,
)
from backinstock.subscriptions.schemas import Sku

Amount = Annotated[
    DecimalString,
    Field(
        ge=0,
        le=Decimal("1e9"),
        decimal_places=4,
        description="A decimal string: '99.00', at most 1000000000 and 4 decimals; a JSON "
        "number is refused.",
    ),
    PlainSerializer(lambda v: f"{v:.2f}", return_type=str),
]
MAX_ORDER_TOTAL = Decimal("1e12")
Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case: CNY, USD, EUR.")
]


class OrderItem(RequestBody):
    sku: Sku
    quantity: StrictInt = Field(ge=1, le=1_000_000)
    unit_price: Amount


class OrderCustomer(RequestBody):
    """Who bought: any of these finds the shopper's subscriptions (contacts by their blind
    index, never stored in the order). Values that are not a valid phone, email or openid are
    ignored for matching rather than refused: the order itself is still recorded."""

    email: Text | None = Field(default=None, max_length=320)
    phone: Text | None = Field(default=None, max_length=64)
    wechat_openid: Text | None = Field(default=None, max_length=64)
    customer_id: Text | None = Field(default=None, min_length=1, max_length=128)


class OrderIn(RequestBody):
    order_id: Text = Field(min_length=1, max_length=128, description="The shop's id; idempotent.")
    items: list[OrderItem] = Field(min_length=1, max_length=500)
    currency: Currency
    customer: OrderCustomer | None = None
    coupon_code: Text | None = Field(default=None, min_length=1, max_length=64)
    notification_token: Text | None = Field(
        default=None,
        max_length=128,
        description="The bis_token the tracked link carried to the product page.",
    )
    occurred_at: Instant | None = Field(
        default=None,
        description="When the order was placed; defaults to the time received. "
        + INSTANT_RULE
        + " More than MAX_CLOCK_SKEW_SECONDS (default 300) in the future: 422.",
    )

    @model_validator(mode="after")
    def _total_fits(self) -> OrderIn:
        # Amounts are stored exactly as 64-bit ten-thousandths: about 9.2e14 at most.
        if sum(item.unit_price * item.quantity for item in self.items) > MAX_ORDER_TOTAL:
            raise ValueError(f"the order total must not exceed {MAX_ORDER_TOTAL}")
        return self


class ConversionOut(BaseModel):
    sku: str
    subscription_id: uuid.UUID | None
    notification_id: uuid.UUID | None
    channel: str | None
    method: Literal["token", "coupon", "contact", "customer_id"] = Field(
        description="How the order was tied to the shopper."
    )
    revenue: str = Field(description="This SKU's lines of the order, a decimal string.")


class SavedOut(BaseModel):
    """An order line of a substitute the shopper was offered while waiting ("saved by a
    substitute")."""

    sku: str = Field(description="The substitute bought.")
    substitute_for: str = Field(description="The sold-out SKU the shopper waits for.")
    subscription_id: uuid.UUID | None
    notification_id: uuid.UUID | None = Field(description="The substitute message.")
    channel: str | None
    revenue: str = Field(description="This SKU's lines of the order, a decimal string.")


class CouponUse(BaseModel):
    code: str
    status: Literal["redeemed", "already_redeemed", "not_issued", "unknown"]


class OrderOut(BaseModel):
    order_id: str
    received_at: datetime
    occurred_at: datetime
    total: str = Field(description="Sum of quantity × unit price, a decimal string.")
    currency: str
    conversions: list[ConversionOut] = Field(
        description="The SKUs of the order attributed to a back-in-stock message or coupon."
    )
    coupon: CouponUse | None
    saved_by_substitute: list[SavedOut] = Field(
        default_factory=list,
        description="The SKUs of the order that are substitutes a substitute message offered "
        "the shopper whose notification_token the order carries, sent within "
        "ATTRIBUTION_WINDOW_SECONDS. They are not conversions: the shopper keeps waiting "
        "for the SKU they asked for.",
    )
