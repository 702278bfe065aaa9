from __future__ import annotations

import pytest

from backinstock.dispatch.render import MessageContext, render
from backinstock.dispatch.sms import is_gsm7, segments

LINK = "https://shop.example/r/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
STOP = "https://shop.example/u/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PAGE = "https://shop.example/s/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take two septets
        ("€" * 81, 2),
        ("你" * 70, 1),
        ("你" * 71, 2),
        ("你" * 134, 2),
        ("你" * 135, 3),
        ("a" * 100 + "你", 2),  # one non-GSM character makes the whole text UCS-2
    ],
)
def test_segments_count_gsm7_and_ucs2(text: str, expected: int) -> None:
    assert segments(text) == expected


def test_gsm7_detection() -> None:
    assert is_gsm7("Only 3 left! Buy: https://x.example/r/abc_-")
    assert not is_gsm7("红色T恤")


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("max_segments", [3, 4])
@pytest.mark.parametrize("coupon", [None, "SORRY-0001"])
def test_compensation_sms_stays_within_the_stated_segments(
    locale: str, max_segments: int, coupon: str | None
) -> None:
    context = MessageContext(
        name="张女士",
        product_name="超长商品名称" * 40,
        link=LINK,
        unsubscribe_url=STOP,
        level=0,
        queue_size=123456,
        page_url=PAGE,
        kind="compensation",
        place=123456,
        coupon_code=coupon,
        coupon_description="满100减10" if coupon else None,
    )
    text = render("sms", locale, context, max_segments).text
    assert segments(text) <= max_segments, text
    assert PAGE in text and "123456" in text, "the page and the place are never cut"
    assert coupon is None or coupon in text
    assert "超长商品名称" in text


def test_a_short_compensation_sms_states_the_place_and_the_coupon() -> None:
    context = MessageContext(
        "Ann",
        "Red T-shirt",
        LINK,
        STOP,
        level=0,
        queue_size=12,
        page_url=PAGE,
        kind="compensation",
        place=7,
        coupon_code="SORRY-01",
    )
    text = render("sms", "en", context).text
    assert text.startswith("Ann, sorry: Red T-shirt sold out again. You keep your place: #7")
    assert "SORRY-01" in text and text.endswith(f"Stop: {PAGE}") and LINK not in text
    assert segments(text) <= 2 and is_gsm7(text)


# The longest form of a reservation's time: another day (wall_time).
HELD_UNTIL = {"zh-CN": "12月7日 10:30", "en": "7 Dec 10:30"}


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
@pytest.mark.parametrize("max_segments", [3, 4])
@pytest.mark.parametrize("held", [False, True])
def test_restock_sms_stays_within_the_stated_segments(
    locale: str, max_segments: int, held: bool
) -> None:
    # Two links alone fill two UCS-2 segments, so three is the useful floor in Chinese: the
    # shopper's page (which stops this alert or all) stands in for the unsubscribe link.
    context = MessageContext(
        name="张女士",
        product_name="超长商品名称" * 40,
        link=LINK,
        unsubscribe_url=STOP,
        level=2,
        queue_size=50,
        page_url=PAGE,
        held_until=HELD_UNTIL[locale] if held else None,
    )
    text = render("sms", locale, context, max_segments).text
    assert segments(text) <= max_segments
    assert LINK in text and PAGE in text, "links are never cut"
    assert not held or HELD_UNTIL[locale] in text, "nor is the reservation"
    assert "超长商品" in text, "the name is cut, never dropped (4 characters at least)"


def test_short_messages_are_untouched() -> None:
    context = MessageContext("Ann", "Red T-shirt", LINK, STOP, level=5, queue_size=3, page_url=PAGE)
    text = render("sms", "en", context).text
    assert text.startswith("Ann, Red T-shirt is back in stock!") and text.endswith(f"Stop: {PAGE}")
    assert segments(text) == 2 and is_gsm7(text)
