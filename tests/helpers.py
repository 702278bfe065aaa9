from __future__ import annotations

from typing import Any


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def subscription_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sku": "TSHIRT-RED-M",
        "channel": "sms",
        "contact": "+8613800138000",
        "locale": "zh-CN",
        "timezone": "Asia/Shanghai",
        "name": "张女士",
        "customer_id": "c-42",
        "priority": "standard",
        "source": "pdp-button",
        "product": {"name": "红色T恤 M", "url": "https://shop.example/p/123"},
        "consent": {"text_version": "2026-01", "ip": "203.0.113.9"},
    }
    body.update(overrides)
    return body


def phone(n: int) -> str:
    """A distinct valid mainland-China mobile number per n."""
    return f"+86138{n:08d}"
