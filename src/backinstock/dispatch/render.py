"""Messages from the templates under ``channels/<channel>/<locale>.*.j2``.

A sandboxed Jinja2 environment: templates are editable by people who are not developers,
and must not reach into Python. HTML templates are autoescaped; text ones are not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, TemplateNotFound, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from backinstock.dispatch.models import Kind
from backinstock.dispatch.sms import segments
from backinstock.resources import resource_dir

DEFAULT_LOCALE = "zh-CN"


@dataclass(frozen=True)
class MessageContext:
    name: str | None
    product_name: str
    link: str
    unsubscribe_url: str
    level: int
    queue_size: int
    # A follow-up's templates are <locale>.followup.*.j2, a confirmation's
    # <locale>.confirmation.*.j2, a compensation's <locale>.compensation.*.j2.
    kind: str = Kind.RESTOCK
    # A compensation's: the shopper's place in the SKU's queue, which they keep.
    place: int | None = None
    coupon_code: str | None = None
    coupon_description: str | None = None
    code: str | None = None  # a confirmation's reply code (SMS)
    valid_hours: int = 24  # how long a confirmation's link and code work
    # The shopper's own page (/s/…): everything they wait for, each stoppable.
    page_url: str = ""
    # A restock message's "reserved for you until …": the shopper's wall-clock time
    # (:func:`wall_time`); None when nothing is held for them, or no longer.
    held_until: str | None = None

    @property
    def scarce(self) -> bool:
        """Scarcity copy ("only N left") when fewer units than waiting shoppers."""
        return 0 < self.level < self.queue_size


def wall_time(moment: datetime, now: datetime, zone: str, locale: str) -> str:
    """``moment`` as the shopper reads a clock where they are: the time alone when it is
    today there ("10:30"), with the day when it is not ("7 Dec 10:30", "12月7日 10:30")."""
    local = moment.astimezone(ZoneInfo(zone))
    clock = f"{local:%H:%M}"
    if local.date() == now.astimezone(ZoneInfo(zone)).date():
        return clock
    if locale.lower().startswith("zh"):
        return f"{local.month}月{local.day}日 {clock}"
    return f"{local.day} {local:%b} {clock}"


def wechat_time(moment: datetime, zone: str) -> str:
    """``moment`` in the form a WeChat subscribe message's ``time`` field takes
    ("2026年12月7日 10:30"), for a field map that names ``data.held_until``."""
    local = moment.astimezone(ZoneInfo(zone))
    return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"


@dataclass(frozen=True)
class Rendered:
    text: str
    subject: str | None = None
    html: str | None = None


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=FileSystemLoader(str(resource_dir("channels"))),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        auto_reload=False,  # templates change with a deploy; no stat() per message
        keep_trailing_newline=False,
    )


def _fit_sms(locale: str, context: MessageContext, text: str, max_segments: int) -> str:
    """Shorten the product name, then drop the shopper's name, then the scarcity copy, until
    the SMS fits: links and the reservation must survive whole, and long names are what
    grows (a name in Chinese also makes an English message UCS-2, 67 characters a part)."""
    name = context.product_name
    shorter = context
    while segments(text) > max_segments and len(name) > 4:
        name = name[: max(4, len(name) * 3 // 4)]
        shorter = dataclasses.replace(context, product_name=name.rstrip() + "…")
        text = _render("sms", locale, "txt", shorter) or text
    for less in ({"name": None}, {"level": 0}):  # level 0: no "only N left"
        if segments(text) <= max_segments:
            break
        shorter = dataclasses.replace(shorter, **less)
        text = _render("sms", locale, "txt", shorter) or text
    return text


def _locale_chain(locale: str) -> list[str]:
    language = locale.split("-")[0]
    chain = [locale, language, "en" if language == "en" else DEFAULT_LOCALE, DEFAULT_LOCALE]
    return list(dict.fromkeys(chain))


def _render(channel: str, locale: str, part: str, context: MessageContext) -> str | None:
    values = {
        "name": context.name,
        "product_name": context.product_name,
        "link": context.link,
        "unsubscribe_url": context.unsubscribe_url,
        "scarce": context.scarce,
        "left": context.level,
        "place": context.place,
        "waiting": context.queue_size,
        "coupon_code": context.coupon_code,
        "coupon_description": context.coupon_description,
        "code": context.code,
        "valid_hours": context.valid_hours,
        "page_url": context.page_url,
        "held_until": context.held_until,
    }
    prefix = "" if context.kind == Kind.RESTOCK else f"{context.kind}."
    for candidate in _locale_chain(locale):
        try:
            template = _environment().get_template(f"{channel}/{candidate}.{prefix}{part}.j2")
        except TemplateNotFound:
            continue
        return template.render(values).strip()
    return None


def render(
    channel: str, locale: str, context: MessageContext, sms_max_segments: int = 3
) -> Rendered:
    text = _render(channel, locale, "txt", context)
    if text is None:
        raise LookupError(f"no text template for channel {channel!r}")
    if channel == "sms":
        return Rendered(text=_fit_sms(locale, context, text, sms_max_segments))
    if channel != "email":
        return Rendered(text=text)
    return Rendered(
        text=text,
        subject=_render(channel, locale, "subject", context),
        html=_render(channel, locale, "html", context),
    )
