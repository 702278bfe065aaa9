"""A product's own rules as the API takes and shows them (``/v1/products/{sku}/policy``).

Each rule is named by the setting it overrides, in lower case, and takes that setting's own
bounds: the constraints are read from the settings' fields, so the two cannot drift apart.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator
from pydantic_settings import BaseSettings

from backinstock.config import ConversionSettings, SoldoutCompensation, WaveSettings
from backinstock.contacts import Channel
from backinstock.fields import RequestBody


def setting_bounds(section: type[BaseSettings], name: str) -> annotated_types.Interval:
    """The bounds (``gt``, ``ge``, ``lt``, ``le``) of a setting's field."""
    found: dict[str, Any] = {}
    for constraint in section.model_fields[name].metadata:
        for bound in ("gt", "ge", "lt", "le"):
            if hasattr(constraint, bound):
                found[bound] = getattr(constraint, bound)
    return annotated_types.Interval(**found)


# A JSON number for the floats (an integer is one too); never true or "2".
BatchMultiplier = Annotated[float, Strict(), setting_bounds(WaveSettings, "batch_multiplier")]
BatchInterval = Annotated[float, Strict(), setting_bounds(WaveSettings, "batch_interval_seconds")]
HoldSeconds = Annotated[int, Strict(), setting_bounds(WaveSettings, "hold_seconds")]
FollowupAfter = Annotated[
    int, Strict(), setting_bounds(ConversionSettings, "followup_after_seconds")
]
SubstituteAfter = Annotated[
    int, Strict(), setting_bounds(ConversionSettings, "substitute_after_seconds")
]


class PolicyIn(RequestBody):
    """The SKU's whole set of overrides: it replaces the one before. A rule left out or
    ``null`` has no override: the setting applies."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"batch_multiplier": 2.0, "batch_interval_seconds": 300, "channels": ["sms"]}
            ]
        }
    )

    batch_multiplier: BatchMultiplier | None = Field(
        default=None,
        description="BATCH_MULTIPLIER for this SKU: each wave step notifies the next "
        "ceil(level × batch_multiplier) shoppers.",
    )
    batch_interval_seconds: BatchInterval | None = Field(
        default=None,
        description="BATCH_INTERVAL_SECONDS for this SKU: the time from one wave step to the next.",
    )
    hold_seconds: HoldSeconds | None = Field(
        default=None,
        description="HOLD_SECONDS for this SKU: how long a told shopper's unit is held for "
        "them after their message is planned (0: no holds).",
    )
    followup_after_seconds: FollowupAfter | None = Field(
        default=None,
        description="FOLLOWUP_AFTER_SECONDS for this SKU: the delay from a restock message to "
        "its follow-up coupon.",
    )
    soldout_compensation: SoldoutCompensation | None = Field(
        default=None,
        description="SOLDOUT_COMPENSATION for this SKU: when its wave closes on a sell-out, "
        'shoppers still in its queue get nothing (`off`), one "sold out again" message '
        "stating their place (`message`), or that message with a coupon (`coupon`).",
    )
    substitute_after_seconds: SubstituteAfter | None = Field(
        default=None,
        description="SUBSTITUTE_AFTER_SECONDS for this SKU: how long a shopper waits for it "
        "while it is sold out before one message names its substitutes in stock (0: never).",
    )
    channels: list[Channel] | None = Field(
        default=None,
        min_length=1,
        max_length=len(Channel),
        description="The channels a subscription to this SKU may use (its primary contact "
        "and its fallbacks); a subscription on another one is refused (422). Subscriptions "
        "made before keep their channels.",
    )

    @field_validator("channels")
    @classmethod
    def _each_once(cls, value: list[Channel] | None) -> list[Channel] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names a channel twice")
        return value


class Source(enum.StrEnum):
    PRODUCT = "product"  # the SKU's own override
    SETTINGS = "settings"  # the process's setting (BACKINSTOCK_…), or every channel


class NumberRule(BaseModel):
    value: float
    source: Source


class SecondsRule(BaseModel):
    value: int
    source: Source


class CompensationRule(BaseModel):
    value: SoldoutCompensation
    source: Source


class ChannelsRule(BaseModel):
    value: list[Channel]
    source: Source


class EffectivePolicy(BaseModel):
    batch_multiplier: NumberRule
    batch_interval_seconds: NumberRule
    hold_seconds: SecondsRule
    followup_after_seconds: SecondsRule
    soldout_compensation: CompensationRule
    substitute_after_seconds: SecondsRule
    channels: ChannelsRule


class PolicyOut(BaseModel):
    sku: str
    policy: EffectivePolicy = Field(
        description="Each rule's effective value for this SKU, and where it comes from: "
        "`product` (its override) or `settings`."
    )
    updated_at: datetime | None = Field(
        description="When the SKU's overrides were last replaced; null if they never were."
    )
