from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated
from zoneinfo import available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from backinstock.contacts import Channel
from backinstock.fields import IpAddress, RequestBody, StrictInt, Text
from backinstock.subscriptions.attributes import ATTRIBUTES_DOC, Attributes
from backinstock.subscriptions.models import Priority, Status

Sku = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description="Printable ASCII without spaces.",
        examples=["TSHIRT-RED-M"],
    ),
]


Contact = Annotated[Text, Field(min_length=1, max_length=320)]
Locale = Annotated[
    str,
    Field(
        max_length=35,
        pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$",
        description="A BCP 47 language tag such as 'zh-CN' or 'en'.",
    ),
]
ProductName = Annotated[Text, Field(min_length=1, max_length=300)]
_TIMEZONES = frozenset(available_timezones())


class ProductIn(RequestBody):
    name: ProductName | None = Field(
        default=None,
        description="The product's name in the subscription's locale (a stock event's: the "
        "default name, used where no name in a shopper's locale or language is known).",
    )
    url: Text | None = Field(default=None, max_length=2048)
    image_url: Text | None = Field(default=None, max_length=2048)


class ConsentIn(RequestBody):
    text_version: Text = Field(min_length=1, max_length=64)
    ip: IpAddress | None = None
    wechat_messages: StrictInt = Field(
        default=1,
        ge=1,
        le=100,
        description="WeChat only: how many subscribe-message consents the shopper granted "
        "(wx.requestSubscribeMessage); each allows one message.",
    )


class FallbackIn(RequestBody):
    channel: Channel
    contact: Contact


class SubscriptionCreate(RequestBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sku": "TSHIRT-RED-M",
                    "channel": "sms",
                    "contact": "+8613800138000",
                    "fallbacks": [{"channel": "email", "contact": "a@b.cn"}],
                    "locale": "zh-CN",
                    "timezone": "Asia/Shanghai",
                    "priority": "standard",
                    "product": {"name": "红色T恤 M", "url": "https://shop.example/p/123"},
                    "attributes": {"segment": "sensitive-skin", "tier": "gold"},
                }
            ]
        }
    )

    sku: Sku
    channel: Channel
    contact: Contact
    fallbacks: list[FallbackIn] = Field(default_factory=list, max_length=3)
    locale: Locale = Field(
        default="zh-CN",
        description="The shopper's language: their messages, and the locale of product.name.",
    )
    timezone: str | None = Field(default=None, max_length=64)
    name: Text | None = Field(default=None, max_length=100)
    customer_id: Text | None = Field(default=None, min_length=1, max_length=128)
    priority: Priority = Priority.STANDARD
    source: Text | None = Field(default=None, max_length=64)
    product: ProductIn | None = None
    consent: ConsentIn | None = None
    attributes: Attributes = Field(default_factory=dict, description=ATTRIBUTES_DOC)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in _TIMEZONES:
            raise ValueError("must be an IANA time zone such as 'Asia/Shanghai'")
        return value

    @field_validator("locale")
    @classmethod
    def _canonical_locale(cls, value: str) -> str:
        return value.replace("_", "-")


class FallbackOut(BaseModel):
    channel: Channel
    contact_masked: str | None


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    sku: str
    channel: Channel
    contact_masked: str | None = Field(
        description="The contact with its middle hidden; null once erased."
    )
    fallbacks: list[FallbackOut]
    status: Status = Field(
        description="pending: waits for its shopper to confirm (double opt-in); waiting and "
        "notified: in the SKU's queue; converted, unsubscribed, expired: stopped."
    )
    position: int | None = Field(
        description="1-based place in the SKU's queue (for a pending subscription, the place "
        "it takes once confirmed within CONFIRM_WINDOW_SECONDS); null when no longer waiting."
    )
    priority: Priority
    locale: str
    timezone: str | None
    customer_id: str | None
    source: str | None
    attributes: dict[str, str] = Field(
        description="The subscription's attributes as stored (see the request's)."
    )
    notification_count: int
    created_at: datetime
    updated_at: datetime


class SubstituteOut(BaseModel):
    """A product in stock now that its shop names instead of a sold-out one."""

    sku: str
    name: str | None = Field(
        description="In the subscription's locale, else its language, else the default name; "
        "null when no name is known."
    )
    url: str | None


class SubscribedOut(SubscriptionOut):
    """The answer to a subscribe request."""

    substitutes: list[SubstituteOut] = Field(
        description="While the SKU is sold out: the substitutes its shop listed "
        "(PUT /v1/products/{sku}/substitutes) that are in stock now, in the order listed. "
        "Empty when there are none, or when the SKU is in stock."
    )


class ConfirmationOut(BaseModel):
    """A confirmed subscription, as the confirmation link's JSON answer shows it."""

    id: uuid.UUID
    status: Status
    position: int | None = Field(description="1-based place in the SKU's queue.")


class EraseRequest(RequestBody):
    contact: Contact
    channel: Channel | None = Field(
        default=None, description="Narrows the match; by default every channel is searched."
    )


class EraseResult(BaseModel):
    erased: int = Field(description="How many subscriptions were deleted.")
