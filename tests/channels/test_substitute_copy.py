"""The substitute message in each channel and locale: every substitute offered is named
with its own link (the SMS names the first and counts the rest), names from storefronts are
escaped in HTML, and the SMS stays within its segments whatever the names' length."""

from __future__ import annotations

import uuid

import pytest

from backinstock.dispatch.models import Kind
from backinstock.dispatch.render import MessageContext, Offer, render
from backinstock.dispatch.sms import segments
from backinstock.senders.base import OutgoingMessage
from backinstock.senders.wechat.template import DEFAULT_FIELD_MAP, template_data

LINK = "https://shop.example/r/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
STOP = "https://shop.example/u/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PAGE = "https://shop.example/s/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"


def _offers(names: list[str]) -> tuple[Offer, ...]:
    return tuple(Offer(name, f"{LINK}/{n}") for n, name in enumerate(names, start=1))


def _context(names: list[str], product: str = "Red T-shirt <L>") -> MessageContext:
    return MessageContext(
        name="Ann",
        product_name=product,
        link=LINK,
        unsubscribe_url=STOP,
        level=0,
        queue_size=0,
        kind=Kind.SUBSTITUTE,
        page_url=PAGE,
        substitutes=_offers(names),
    )


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_email_names_every_substitute_with_its_own_link(locale: str) -> None:
    names = ["Blue T-shirt <M>", "Red T-shirt M", "Green & Co"]
    email = render("email", locale, _context(names))
    for n, name in enumerate(names, start=1):
        assert f"{name}: {LINK}/{n}" in email.text or f"{name}：{LINK}/{n}" in email.text
    assert email.html is not None
    assert "Blue T-shirt &lt;M&gt;" in email.html and "<M>" not in email.html
    assert f'href="{LINK}/3"' in email.html and "Green &amp; Co" in email.html
    assert PAGE in email.text and STOP in email.text
    assert email.subject is not None and "Blue T-shirt" in email.subject
    assert ("2 more" in email.subject) == (locale == "en")
    assert "None" not in email.text


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_sms_names_the_first_and_counts_the_others(locale: str) -> None:
    one = render("sms", locale, _context(["Blue T-shirt M"])).text
    assert "Blue T-shirt M" in one and f"{LINK}/1" in one and PAGE in one
    assert "+" not in one.replace(PAGE, "") and "另有" not in one
    three = render("sms", locale, _context(["Blue T-shirt M", "Red M", "Green M"])).text
    assert f"{LINK}/1" in three and f"{LINK}/2" not in three
    assert "+2 more" in three or "另有2款" in three


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("max_segments", [3, 4])
@pytest.mark.parametrize("offered", [1, 10])
def test_sms_stays_within_the_stated_segments(locale: str, max_segments: int, offered: int) -> None:
    long_names = ["超长替代商品名称" * 30] * offered
    context = _context(long_names, product="超长商品名称" * 40)
    text = render("sms", locale, context, max_segments).text
    assert segments(text) <= max_segments, text
    assert f"{LINK}/1" in text and PAGE in text, "links are never cut"
    assert "超长替代" in text and "超长商品" in text, "names are shortened, not dropped"


def test_wechat_names_them_and_says_so_in_the_status_field() -> None:
    text = render("wechat", "zh-CN", _context(["蓝色T恤 M", "红色T恤 M"], "红色T恤 L")).text
    assert text == "「红色T恤 L」仍缺货，现有：蓝色T恤 M、红色T恤 M"
    message = OutgoingMessage(
        notification_id=uuid.uuid4(),
        channel="wechat",
        to="o" * 28,
        to_masked="o***",
        text=text,
        data={"kind": Kind.SUBSTITUTE.value, "locale": "zh-CN", "product_name": "红色T恤 L"},
    )
    data = template_data(message, DEFAULT_FIELD_MAP)
    assert data["phrase2"] == {"value": "替代款有货"}
    assert len(data["thing3"]["value"]) <= 20
    english = render("wechat", "en", _context(["Blue M"], "Red L")).text
    assert english == "Red L still sold out. In stock: Blue M"
