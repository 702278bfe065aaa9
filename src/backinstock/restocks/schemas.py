from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from backinstock.errors import ErrorBody
from backinstock.fields import INSTANT_RULE, Instant, RequestBody, StrictInt, Text
from backinstock.subscriptions.schemas import Locale, ProductIn, ProductName, Sku

# A stock level, per location and summed over a SKU's locations: the level columns are 32-bit.
MAX_LEVEL = 1_000_000_000


class StockProductIn(ProductIn):
    names: dict[Locale, ProductName] | None = Field(
        default=None,
        max_length=20,
        description='The product\'s name by locale, e.g. {"zh-CN": "红色T恤 M", '
        '"en": "Red T-shirt M"}: each message uses the name in its shopper\'s locale.',
    )


class RestockIn(RequestBody):
    event_id: Text = Field(min_length=1, max_length=128, description="Unique per location.")
    sku: Sku
    available: StrictInt = Field(
        ge=0,
        le=MAX_LEVEL,
        description="Absolute sellable quantity at this location. The SKU's level (the sum "
        f"over its locations) must stay at most {MAX_LEVEL}: a level past it is a 422.",
    )
    location: Text = Field(default="default", min_length=1, max_length=64)
    occurred_at: Instant | None = Field(
        default=None,
        description="When the level was true; defaults to the time received. "
        + INSTANT_RULE
        + " More than MAX_CLOCK_SKEW_SECONDS (default 300) in the future: 422.",
    )
    product: StockProductIn | None = None


MAX_BATCH_LEVELS = 1000


class RestockBatchIn(RequestBody):
    levels: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_LEVELS,
        description=f"Up to {MAX_BATCH_LEVELS} stock events, each a `POST /v1/restocks` body "
        "(RestockIn). Each is validated alone: a refused one gets its own 422 in `results` "
        "and the others are recorded.",
        json_schema_extra={"items": {"$ref": "#/components/schemas/RestockIn"}},
    )


class RestockOut(BaseModel):
    restock_id: uuid.UUID
    sku: str
    available: StrictInt = Field(description="The SKU's level: the sum over its locations.")
    waiting: int = Field(description="Shoppers in the SKU's queue.")
    first_wave: int = Field(
        description="Shoppers the step this event started will notify (0 if none)."
    )
    applied: bool = Field(description="False for a late event older than the level it knew.")


class StockOut(BaseModel):
    sku: str
    level: int = Field(description="The SKU's level: the sum over its locations.")
    held: int = Field(
        description="Units held for shoppers told they are back: one per message whose hold "
        "(HOLD_SECONDS, or the product's hold_seconds) has not expired, been consumed by an "
        "order carrying its token, or ended with a sell-out."
    )
    free: int = Field(description="Units free for anyone: max(level - held, 0).")


class HoldOut(BaseModel):
    sku: str
    until: datetime = Field(description="When the hold expires, unless an order consumes it.")


class BatchItemOut(BaseModel):
    index: int = Field(description="The event's position in `levels`, from 0.")
    status: int = Field(
        description="What `POST /v1/restocks` would have answered: 202 recorded, 200 a replay "
        "(the stored answer), 422 refused (`error`)."
    )
    result: RestockOut | None = Field(description="The event's answer; null when refused.")
    error: ErrorBody | None = Field(
        description="Why the event was refused, in the one error shape; null otherwise."
    )


class RestockBatchOut(BaseModel):
    recorded: int = Field(description="Events recorded now (status 202).")
    replayed: int = Field(description="Events recorded before (status 200).")
    refused: int = Field(description="Events refused (status 422); nothing of them is kept.")
    results: list[BatchItemOut] = Field(description="One per event, in the request's order.")
