from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from backinstock.fields import RequestBody, Text
from backinstock.subscriptions.schemas import Sku

MAX_CODES_PER_UPLOAD = 100_000

CouponCode = Annotated[
    str,
    Field(
        min_length=3,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Letters, digits, '-' and '_'.",
    ),
]


class PoolIn(RequestBody):
    name: Text = Field(min_length=1, max_length=100, description="Unique among pools.")
    sku: Sku | None = Field(
        default=None, description="Only for follow-ups about this SKU; none: any SKU."
    )
    description: Text | None = Field(
        default=None, min_length=1, max_length=200, description='Shown with the code: "10% off".'
    )
    codes: list[CouponCode] = Field(
        min_length=1, max_length=MAX_CODES_PER_UPLOAD, description="Each handed out once."
    )


class PoolOut(BaseModel):
    id: uuid.UUID
    name: str
    sku: str | None
    description: str | None
    created_at: datetime
    total: int = Field(description="Codes uploaded.")
    issued: int = Field(description="Codes handed to shoppers in follow-up messages.")
    redeemed: int = Field(description="Issued codes used in an order.")
    available: int = Field(description="Codes not yet handed out.")
