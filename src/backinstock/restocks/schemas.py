from __future__ import annotations

import uuid

from pydantic import AwareDatetime, BaseModel, Field

from backinstock.fields import Text
from backinstock.subscriptions.schemas import ProductIn, Sku


class RestockIn(BaseModel):
    event_id: Text = Field(min_length=1, max_length=128, description="Unique per location.")
    sku: Sku
    available: int = Field(
        ge=0, le=1_000_000_000, description="Absolute sellable quantity at this location."
    )
    location: Text = Field(default="default", min_length=1, max_length=64)
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the level was true; defaults to the time received."
    )
    product: ProductIn | None = None


class RestockOut(BaseModel):
    restock_id: uuid.UUID
    sku: str
    available: int = Field(description="The SKU's level: the sum over its locations.")
    waiting: int = Field(description="Shoppers in the SKU's queue.")
    first_wave: int = Field(
        description="Shoppers the step this event started will notify (0 if none)."
    )
    applied: bool = Field(description="False for a late event older than the level it knew.")
