"""What a WeChat subscribe message says: template data and the mini-program page.

Template data ("data") is built from ``field_map``: template key -> value source. Sources:
``product_name`` (``message.data["product_name"]``, else the message text), ``status``
(到货 / In stock, by locale), ``text`` (the rendered message) and ``data.<key>`` (any other
``message.data`` entry). Every value is then fitted to the WeChat limit for the key's type,
the key without its trailing digits (``thing3`` -> ``thing``), see :func:`fit_value`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

from backinstock.senders.base import OutgoingMessage

DEFAULT_FIELD_MAP: dict[str, str] = {
    "thing1": "product_name",
    "phrase2": "status",
    "thing3": "text",
}
_SOURCES = frozenset({"product_name", "status", "text"})
_STATUS = {"zh": "到货", "en": "In stock"}
_KIND_STATUS = {
    "followup": {"zh": "优惠", "en": "Coupon"},
    "compensation": {"zh": "售罄", "en": "Sold out"},
    "substitute": {"zh": "替代款有货", "en": "Alternatives"},
}

# WeChat's per-type limits in characters (docs: subscribeMessage.send, "参数值限制").
_LIMITS = {
    "thing": 20,
    "phrase": 5,
    "name": 10,
    "character_string": 32,
    "number": 32,
    "letter": 32,
    "symbol": 5,
    "phone_number": 17,
    "car_number": 8,
}
_NOT_HAN = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff]")


def fit_value(key: str, value: str) -> str:
    """Fit ``value`` to the WeChat rules for the type of template key ``key``.

    * whitespace runs (newlines included) become one space: every field is a single line;
    * ``thing`` (≤ 20 characters) is cut to 19 plus "…" so readers see it was shortened;
    * ``phrase`` accepts only Han characters (≤ 5): anything else is dropped, and if nothing
      is left the value becomes 到货 — WeChat rejects the whole message (47003) otherwise;
    * the other limited types are cut at their limit (an ellipsis would be an invalid
      character for number, letter, ...); time, date, amount and unknown types pass as is.

    Lengths count Unicode code points, as WeChat counts characters (a Han character is one).
    """
    kind = key.rstrip("0123456789")
    value = " ".join(value.split())
    if kind == "phrase":
        value = _NOT_HAN.sub("", value) or _STATUS["zh"]
    limit = _LIMITS.get(kind)
    if limit is None or len(value) <= limit:
        return value
    if kind == "thing":
        return value[: limit - 1] + "…"
    return value[:limit]


def is_zh(message: OutgoingMessage) -> bool:
    # Subscriptions default to zh-CN (the render default) when no locale is recorded.
    return str(message.data.get("locale") or "zh-CN").lower().startswith("zh")


def _source_value(message: OutgoingMessage, source: str) -> str:
    if source == "product_name":
        return str(message.data.get("product_name") or message.text)
    if source == "status":
        statuses = _KIND_STATUS.get(str(message.data.get("kind")), _STATUS)
        return statuses["zh" if is_zh(message) else "en"]
    if source == "text":
        return message.text
    value = message.data.get(source.removeprefix("data."))
    return "" if value is None else str(value)


def template_data(message: OutgoingMessage, field_map: dict[str, str]) -> dict[str, Any]:
    return {
        key: {"value": fit_value(key, _source_value(message, source))}
        for key, source in field_map.items()
    }


def check_field_map(field_map: dict[str, str]) -> dict[str, str]:
    # Fail at start-up, not with a 47003 on every message.
    if not field_map:
        raise ValueError("the WeChat field map is empty")
    for key, source in field_map.items():
        if source not in _SOURCES and not (source.startswith("data.") and len(source) > 5):
            raise ValueError(f"unknown WeChat field source {source!r} for {key!r}")
    return dict(field_map)


def page_with_token(page: str, link: str | None, page_url: str | None = None) -> str:
    """The mini-program page plus ``bis_token``: the last path segment of the /r/ link, so
    the page can record the click like the web redirect does; and ``bis_page``, the last
    segment of the shopper's own page (``/s/…``), which a mini-program may open in a
    web-view: no field of a subscribe message has room for a link."""
    params = []
    for name, url in (("bis_token", link), ("bis_page", page_url)):
        token = urlsplit(url).path.rstrip("/").rpartition("/")[2] if url else ""
        if token:
            params.append(f"{name}={quote(token, safe='')}")
    if not params:
        return page
    separator = "&" if "?" in page else "?"
    return page + separator + "&".join(params)
