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
from functools import lru_cache
from types import SimpleNamespace

from jinja2 import FileSystemLoader, TemplateNotFound, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from backinstock.dispatch.models import Kind
from backinstock.dispatch.sms import segments
from backinstock.resources import resource_dir
from backinstock.subscriptions.attributes import SEGMENT, is_segment

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
    """Shorten the product name (then drop the shopper's name) until the SMS fits: links
    and the unsubscribe URL must survive whole, and long names are what grows."""
    name = context.product_name
    while segments(text) > max_segments and len(name) > 4:
        name = name[: max(4, len(name) * 3 // 4)]
        shorter = dataclasses.replace(context, product_name=name.rstrip() + "…")
        text = _render("sms", locale, "txt", shorter) or text
    if segments(text) > max_segments and context.name:
        shorter = dataclasses.replace(context, name=None, product_name=name.rstrip() + "…")
        text = _render("sms", locale, "txt", shorter) or text
    if segments(text) > max_segments and context.attributes:
        # Last, the attributes a template prints (up to 8 of 64 characters each); the
        # segment still picks the variant, whose copy then shows its defaults.
        bare = dataclasses.replace(context, name=None, product_name=name.rstrip() + "…")
        text = _render("sms", locale, "txt", bare, printed=False) or text
    return text


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
