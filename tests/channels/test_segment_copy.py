"""Copy per segment: a subscription's segment picks its variant file by file, falling back
to the default of the same locale; attributes print safely, and never push an SMS past its
segment budget."""

from __future__ import annotations

import httpx
import pytest

from backinstock.dispatch.render import (
    MessageContext,
    _environment,
    printed_attributes,
    render,
)
from backinstock.dispatch.sms import segments
from backinstock.runtime import Runtime
from tests.conftest import WorkerStarter
from tests.conversions.helpers import outbox_by_subscription
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.helpers import outbox_count, post_level
from tests.workers import settle

LINK = "https://shop.example/r/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
STOP = "https://shop.example/u/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"
PAGE = "https://shop.example/s/AQGiAJGYWHaXqXfdeRWLBYzg7hsIaEXx9nEe_EqY9Awp"


def _context(attributes: dict[str, str], name: str | None = None) -> MessageContext:
    return MessageContext(
        name=name,
        product_name="舒缓面霜",
        link=LINK,
        unsubscribe_url=STOP,
        level=5,
        queue_size=3,
        page_url=PAGE,
        attributes=attributes,
    )


def test_the_segment_picks_its_variant() -> None:
    text = render("sms", "zh-CN", _context({"segment": "sensitive-skin"})).text
    assert text.startswith("敏感肌用户您好，")
    assert LINK in text and PAGE in text


@pytest.mark.parametrize("attributes", [{}, {"segment": "oily-skin"}, {"tier": "gold"}])
def test_without_a_variant_the_default_copy_is_sent(attributes: dict[str, str]) -> None:
    default = render("sms", "zh-CN", _context({})).text
    assert render("sms", "zh-CN", _context(attributes)).text == default
    assert "敏感肌" not in default


def test_the_shoppers_language_comes_before_the_segment() -> None:
    # The variant exists in zh-CN and en: an English shopper gets the English one; a
    # Japanese shopper (no Japanese copy) the default locale's variant.
    english = render("sms", "en", _context({"segment": "sensitive-skin"})).text
    assert english.startswith("good news for sensitive skin")
    japanese = render("sms", "ja", _context({"segment": "sensitive-skin"})).text
    assert japanese.startswith("敏感肌用户您好，")


def test_each_file_falls_back_on_its_own() -> None:
    # Only the email subject has a variant: the body is the default's.
    email = render("email", "zh-CN", _context({"segment": "sensitive-skin"}, name="张女士"))
    default = render("email", "zh-CN", _context({}, name="张女士"))
    assert email.subject is not None and email.subject.startswith("敏感肌适用")
    assert email.text == default.text and email.html == default.html


def test_a_segment_that_is_not_a_slug_never_becomes_a_path() -> None:
    # Refused at the boundary; checked again where it becomes part of a template name.
    default = render("sms", "zh-CN", _context({})).text
    hostile = _context({"segment": "../sms/segments/sensitive-skin"})
    assert render("sms", "zh-CN", hostile).text == default


def test_an_attribute_prints_and_a_missing_one_prints_nothing() -> None:
    shade = render("sms", "zh-CN", _context({"segment": "sensitive-skin", "shade": "象牙白"}))
    assert "「舒缓面霜」（象牙白）温和配方" in shade.text
    plain = render("sms", "zh-CN", _context({"segment": "sensitive-skin"}))
    assert "「舒缓面霜」温和配方" in plain.text
    template = _environment().from_string("[{{ attributes.tier }}|{{ attributes.x|default('-') }}]")
    assert template.render(attributes=printed_attributes({})) == "[|-]"
    assert template.render(attributes=printed_attributes({"tier": "gold"})) == "[gold|-]"


def test_keys_named_like_dict_methods_print_their_values() -> None:
    template = _environment().from_string("{{ attributes.items }}/{{ attributes['keys'] }}")
    assert template.render(attributes=printed_attributes({"items": "a", "keys": "b"})) == "a/b"


def test_html_escapes_attributes() -> None:
    template = _environment().get_template("email/zh-CN.html.j2")
    html = template.render(name="<b>", product_name="x", attributes={"tier": "<i>"})
    assert "<b>" not in html
    assert render_attribute_html("<script>") == "&lt;script&gt;"


def render_attribute_html(value: str) -> str:
    template = _environment().from_string("{{ attributes.tier|e }}")
    return template.render(attributes=printed_attributes({"tier": value}))


@pytest.mark.parametrize("max_segments", [3, 4])
def test_long_attributes_give_way_before_the_links(max_segments: int) -> None:
    context = _context({"segment": "sensitive-skin", "shade": "象" * 64}, name="张女士")
    context = MessageContext(**{**vars(context), "product_name": "舒缓面霜" * 30})
    text = render("sms", "zh-CN", context, max_segments).text
    assert segments(text) <= max_segments, text
    assert LINK in text and PAGE in text


async def test_a_restock_sends_each_shopper_their_segments_copy(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
) -> None:
    key = api_keys["all"]
    ids = []
    for i, attributes in enumerate([{"segment": "sensitive-skin", "shade": "象牙白"}, {}]):
        body = subscription_body(sku="SKU-1", contact=phone(i), attributes=attributes)
        response = await client.post("/v1/subscriptions", json=body, headers=bearer(key))
        ids.append(response.json()["id"])
    start_worker()
    await post_level(client, key, 2)
    await settle()
    assert await outbox_count(runtime) == 2
    texts = await outbox_by_subscription(runtime)
    assert texts[ids[0]].startswith("张女士，您关注的「红色T恤 M」（象牙白）温和配方到货了")
    assert "温和配方" not in texts[ids[1]] and "象牙白" not in texts[ids[1]]
