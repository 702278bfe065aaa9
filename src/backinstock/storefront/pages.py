"""The shopper's page in HTML, zh-CN and en: the dashboard's look (its ``base.html`` and
stylesheet), autoescaped Jinja2, no script and no inline style (the page's CSP refuses
both), so a product name or SKU can only ever be text."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from backinstock.catalog.service import canonical_locale
from backinstock.contacts import Channel
from backinstock.dashboard.pages import TEMPLATES_DIR, asset_url
from backinstock.storefront.shopper import Alert
from backinstock.subscriptions.models import Status

LOCALES = ("zh-CN", "en")
DEFAULT_LOCALE = "en"

_templates = jinja2.Environment(
    loader=jinja2.ChoiceLoader(
        [
            jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
            jinja2.FileSystemLoader(TEMPLATES_DIR),
        ]
    ),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.globals["asset"] = asset_url

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your back-in-stock alerts",
        "language": "Language",
        "for": "Alerts sent to",
        "erased": "This address is no longer stored.",
        "sku": "Item",
        "pending": "Waiting for you to confirm: open the link we sent you. Once you do, you "
        "will be number {n} in line.",
        "waiting": "Number {n} in line.",
        "notified": "Back in stock: we told you. You keep your place, number {n} in line, "
        "for the next restock.",
        "stop": "Stop",
        "substitutes": "In stock now instead:",
        "stop_one": "Stop alerts for {name}",
        "stop_all": "Stop all alerts",
        "stopped": "Stopped: you will not hear from us about {name} again.",
        "stopped_all": "All stopped: you will not hear from us about these products again.",
        "nothing": "You are not waiting for anything at the moment.",
        "about": "Anyone with this link can see and stop these alerts: do not forward it.",
        "invalid_title": "Link not valid",
        "invalid": "This link is not valid, or what it was for no longer exists.",
        "forbidden_title": "Not sent from this page",
        "forbidden": "Stop your alerts from this page's own buttons.",
    },
    "zh-CN": {
        "title": "我的到货提醒",
        "language": "语言",
        "for": "提醒发送至",
        "erased": "该联系方式已不再保存。",
        "sku": "商品编号",
        "pending": "等待您确认：请打开我们发给您的链接。确认后，您将排在第 {n} 位。",
        "waiting": "目前排在第 {n} 位。",
        "notified": "已到货，我们已通知您。下次补货时您仍排在第 {n} 位。",
        "stop": "停止提醒",
        "substitutes": "现在有货的替代商品：",
        "stop_one": "停止提醒：「{name}」",
        "stop_all": "全部停止",
        "stopped": "已停止：不会再收到「{name}」的到货通知。",
        "stopped_all": "已全部停止：不会再收到这些商品的到货通知。",
        "nothing": "您目前没有等待中的到货提醒。",
        "about": "持有此链接的人都可以查看和停止这些提醒，请勿转发。",
        "invalid_title": "链接无效",
        "invalid": "此链接无效，或其对应的提醒已不存在。",
        "forbidden_title": "请在本页面操作",
        "forbidden": "请使用本页面上的按钮停止提醒。",
    },
}
CHANNELS = {
    "en": {Channel.EMAIL: "email", Channel.SMS: "text message", Channel.WECHAT: "WeChat"},
    "zh-CN": {Channel.EMAIL: "邮件", Channel.SMS: "短信", Channel.WECHAT: "微信"},
}


def _supported(locale: str | None) -> str | None:
    if not locale:
        return None
    if locale in LOCALES:
        return locale
    language = canonical_locale(locale).split("-")[0]
    return {"zh": "zh-CN", "en": "en"}.get(language)


def _accepted(header: str | None) -> Iterable[str]:
    """Accept-Language's tags, most wanted first (RFC 9110 quality values)."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def page_locale(
    requested: str | None, subscription_locale: str | None, accept_language: str | None
) -> str:
    """The page's language: the one asked for (``?lang=``), else the subscription's,
    else the browser's first choice we speak, else English."""
    for candidate in (requested, subscription_locale, *_accepted(accept_language)):
        try:
            found = _supported(candidate)
        except (ValueError, IndexError):
            found = None
        if found:
            return found
    return DEFAULT_LOCALE


@dataclass(frozen=True)
class Link:
    name: str
    url: str | None
    sku: str


@dataclass(frozen=True)
class Row:
    id: str
    name: str
    url: str | None
    sku: str
    state: str
    channel: str
    stop_label: str
    substitutes: tuple[Link, ...] = ()


def _state(t: dict[str, str], alert: Alert) -> str:
    place = alert.position or 1
    if alert.status is Status.PENDING:
        return t["pending"].format(n=place)
    if alert.status is Status.NOTIFIED:
        return t["notified"].format(n=place)
    return t["waiting"].format(n=place)


def _link(url: str | None) -> str | None:
    """Only web links are links (the API accepts https product URLs; anything else stays
    text)."""
    return url if url and url.lower().startswith(("https://", "http://")) else None


def _substitute_link(
    alert: Alert, sku: str, url: str | None, tracked: Callable[[uuid.UUID, int], str] | None
) -> str | None:
    """The substitute's page, through the tracked link of the message that offered it when
    one did (it redirects to the same page)."""
    direct = _link(url)
    offer = alert.offered.get(sku)
    if direct is None or offer is None or tracked is None:
        return direct
    return tracked(*offer)


def shopper_page(
    locale: str,
    action: str,
    contact_masked: str | None,
    alerts: list[Alert],
    notice: str | None = None,
    tracked: Callable[[uuid.UUID, int], str] | None = None,
) -> str:
    """``tracked`` makes the link of a substitute a message offered (its message and
    place): the page's clicks count as the message's would."""
    t = TEXT[locale]
    rows = []
    for alert in alerts:
        name = alert.product_name or alert.sku
        rows.append(
            Row(
                id=str(alert.id),
                name=name,
                url=_link(alert.product_url),
                sku=alert.sku,
                state=_state(t, alert),
                channel=CHANNELS[locale][alert.channel],
                stop_label=t["stop_one"].format(name=name),
                substitutes=tuple(
                    Link(s.name or s.sku, _substitute_link(alert, s.sku, s.url, tracked), s.sku)
                    for s in alert.substitutes
                ),
            )
        )
    return _templates.get_template("shopper.html").render(
        t=t,
        lang=locale,
        action=action,
        contact=contact_masked,
        alerts=rows,
        notice=notice,
    )


def stopped_notice(locale: str, name: str | None) -> str:
    t = TEXT[locale]
    return t["stopped_all"] if name is None else t["stopped"].format(name=name)


def message_page(locale: str, title_key: str, text_key: str) -> str:
    t = TEXT[locale]
    return _templates.get_template("shopper_message.html").render(
        t=t, lang=locale, title=t[title_key], text=t[text_key]
    )
