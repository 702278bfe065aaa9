"""The "sold out again" message in each channel and locale: the place is stated, the
coupon appears only when the message carries one."""

from __future__ import annotations

import uuid

import pytest

from backinstock.dispatch.models import Kind
from backinstock.dispatch.render import MessageContext, render
from backinstock.senders.base import OutgoingMessage
from backinstock.senders.wechat.template import DEFAULT_FIELD_MAP, template_data

LINK = "https://shop.example/r/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
STOP = "https://shop.example/u/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PAGE = "https://shop.example/s/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PLACE = {"zh-CN": ("第7位",), "en": ("#7 ", "number 7 ")}


def _states_place(locale: str, text: str) -> bool:
    return any(marker in text for marker in PLACE[locale])


def _context(coupon: str | None) -> MessageContext:
    return MessageContext(
        name="Ann",
        product_name="Red T-shirt <M>",
        link=LINK,
        unsubscribe_url=STOP,
        level=0,
        queue_size=12,
        kind=Kind.COMPENSATION,
        place=7,
        coupon_code=coupon,
        coupon_description="10% off" if coupon else None,
        page_url=PAGE,
    )


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("coupon", [None, "SORRY-01"])
def test_every_channel_states_the_place_and_only_a_real_coupon(
    locale: str, coupon: str | None
) -> None:
    for channel in ("sms", "email", "wechat"):
        text = render(channel, locale, _context(coupon)).text
        assert _states_place(locale, text), (channel, text)
        assert (coupon is not None) == ("SORRY-01" in text), (channel, text)
        assert "None" not in text
    email = render("email", locale, _context(coupon))
    assert email.subject is not None and _states_place(locale, email.subject + " ")
    assert email.html is not None and "Red T-shirt &lt;M&gt;" in email.html
    assert PAGE in email.text and STOP in email.text and LINK not in email.text
    assert (coupon is not None) == ("10% off" in email.text)


def test_wechat_says_sold_out_in_the_status_field() -> None:
    message = OutgoingMessage(
        notification_id=uuid.uuid4(),
        channel="wechat",
        to="o" * 28,
        to_masked="o***",
        text="抱歉，「红色T恤」又售罄了，您仍排在第7位。",
        data={"kind": Kind.COMPENSATION.value, "locale": "zh-CN", "product_name": "红色T恤"},
    )
    data = template_data(message, DEFAULT_FIELD_MAP)
    assert data["phrase2"] == {"value": "售罄"}
