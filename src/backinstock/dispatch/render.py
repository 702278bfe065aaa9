"""Messages from the templates under ``channels/<channel>/<locale>.*.j2``.

A sandboxed Jinja2 environment: templates are editable by people who are not developers,
and must not reach into Python. HTML templates are autoescaped; text ones are not.

A subscription's ``segment`` attribute picks a variant where one exists
(``channels/<channel>/segments/<segment>/<locale>.*.j2``), file by file, before the default
of the same locale; the segment's grammar (a slug) keeps it a plain folder name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, TemplateNotFound, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from backinstock.dispatch.models import Kind
from backinstock.dispatch.sms import segments
from backinstock.resources import resource_dir
from backinstock.subscriptions.attributes import SEGMENT, is_segment

DEFAULT_LOCALE = "zh-CN"


@dataclass(frozen=True)
class Offer:
    """A substitute a substitute message names: its name and its own tracked link."""

    name: str
    link: str


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
    # A substitute message's offers, in order (the templates' ``substitutes``).
    substitutes: tuple[Offer, ...] = ()
    # The subscription's attributes (validated one-line values); ``segment`` among them
    # picks the template variant.
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def segment(self) -> str | None:
        return self.attributes.get(SEGMENT)

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
    """Shorten the product names (the product's and any substitutes'), then drop the
    shopper's name, the scarcity copy and the attributes printed, until the SMS fits: links
    and the reservation must survive whole, and long names are what grows (a name in
    Chinese also makes an English message UCS-2, 67 characters a part)."""
    shorter = context
    while segments(text) > max_segments and _longest_name(shorter) > 4:
        shorter = _shortened(shorter)
        text = _render("sms", locale, "txt", shorter) or text
    for less in ({"name": None}, {"level": 0}):  # level 0: no "only N left"
        if segments(text) <= max_segments:
            break
        shorter = dataclasses.replace(shorter, **less)
        text = _render("sms", locale, "txt", shorter) or text
    if segments(text) > max_segments and context.attributes:
        # Last, the attributes a template prints (up to 8 of 64 characters each); the
        # segment still picks the variant, whose copy then shows its defaults.
        text = _render("sms", locale, "txt", shorter, printed=False) or text
    return text


def _bare(name: str) -> str:
    return name.removesuffix("…")


def _longest_name(context: MessageContext) -> int:
    names = [context.product_name, *(o.name for o in context.substitutes)]
    return max(len(_bare(name)) for name in names)


def _shortened(context: MessageContext) -> MessageContext:
    """Every name longer than 4 characters cut to three quarters (at least 4), with "…"."""

    def cut(name: str) -> str:
        bare = _bare(name)
        if len(bare) <= 4:
            return name
        return bare[: max(4, len(bare) * 3 // 4)].rstrip() + "…"

    return dataclasses.replace(
        context,
        product_name=cut(context.product_name),
        substitutes=tuple(Offer(cut(o.name), o.link) for o in context.substitutes),
    )


def _locale_chain(locale: str) -> list[str]:
    language = locale.split("-")[0]
    chain = [locale, language, "en" if language == "en" else DEFAULT_LOCALE, DEFAULT_LOCALE]
    return list(dict.fromkeys(chain))


def _template_names(channel: str, name: str, segment: str | None) -> list[str]:
    default = f"{channel}/{name}"
    # Checked again here, not only at the boundary: the value becomes part of a path.
    if segment is None or not is_segment(segment):
        return [default]
    return [f"{channel}/segments/{segment}/{name}", default]


def printed_attributes(attributes: Mapping[str, str]) -> SimpleNamespace:
    """What templates see as ``attributes``: ``attributes.items`` is the value of the key
    "items" (of a dict, Jinja would give its method), and a missing key prints nothing
    (Jinja's Undefined), so ``{{ attributes.tier | default("…") }}`` never fails. Keys are
    slugs starting with a letter, never a dunder."""
    return SimpleNamespace(**attributes)


def _render(
    channel: str, locale: str, part: str, context: MessageContext, *, printed: bool = True
) -> str | None:
    """``printed``: whether templates see the attributes (not when they cannot fit)."""
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
        "substitutes": [{"name": o.name, "link": o.link} for o in context.substitutes],
        "attributes": printed_attributes(context.attributes if printed else {}),
        "segment": context.segment,
    }
    prefix = "" if context.kind == Kind.RESTOCK else f"{context.kind}."
    for candidate in _locale_chain(locale):
        for name in _template_names(channel, f"{candidate}.{prefix}{part}.j2", context.segment):
            try:
                template = _environment().get_template(name)
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
