"""The shopper's own page (/s/{token}) through the app: what a contact waits for, masked,
with places in line; stopping one or all by POST only, and only the page's own; tokens of
other purposes refused both ways; hostile names only ever text; zh-CN and en."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from backinstock import db
from backinstock.config import OptInSettings
from backinstock.identity import (
    CLICK_TOKEN,
    CONFIRM_TOKEN,
    SHOPPER_PAGE_TOKEN,
    UNSUBSCRIBE_TOKEN,
)
from backinstock.runtime import Runtime
from backinstock.subscriptions import lifecycle
from tests.conftest import ClientFactory, WorkerStarter
from tests.conversions.helpers import outbox_by_subscription
from tests.helpers import bearer, phone, subscription_body
from tests.restocks.helpers import post_level
from tests.workers import settle

ANN = "ann.lee@mailbox.example"
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def subscribe(client: httpx.AsyncClient, key: str, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/subscriptions", json=subscription_body(**body), headers=bearer(key)
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def page_path(runtime: Runtime, sub: dict[str, Any]) -> str:
    return f"/s/{runtime.keys.tokens.sign(SHOPPER_PAGE_TOKEN, uuid.UUID(sub['id']))}"


async def status_of(client: httpx.AsyncClient, key: str, sub: dict[str, Any]) -> str:
    response = await client.get(f"/v1/subscriptions/{sub['id']}", headers=bearer(key))
    return str(response.json()["status"])


def listed_skus(html: str) -> list[str]:
    return re.findall(r'<li class="card watch" data-sku="([^"]*)"', html)


async def ann_and_others(client: httpx.AsyncClient, key: str) -> dict[str, dict[str, Any]]:
    """Ann waits for two SKUs (second in line for one); Bob for one; Ann's address in
    another case is still Ann."""
    bob = await subscribe(
        client, key, sku="SKU-1", channel="email", contact="bob@mailbox.example", locale="en"
    )
    first = await subscribe(
        client,
        key,
        sku="SKU-1",
        channel="email",
        contact=ANN,
        locale="en",
        product={"name": "Linen shirt", "url": "https://shop.example/p/1"},
    )
    second = await subscribe(
        client,
        key,
        sku="SKU-2",
        channel="email",
        contact=ANN.upper(),
        locale="en",
        product={"name": "Canvas tote"},
    )
    sms = await subscribe(
        client,
        key,
        sku="SKU-2",
        channel="sms",
        contact=phone(7),
        locale="en",
        product={"name": "Canvas tote"},
    )
    return {"bob": bob, "first": first, "second": second, "sms": sms}


async def test_the_page_shows_what_the_contact_waits_for_masked_and_changes_nothing(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    subs = await ann_and_others(client, key)
    page = await client.get(page_path(runtime, subs["first"]))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"
    html = page.text
    assert '<html lang="en">' in html
    assert listed_skus(html) == ["SKU-1", "SKU-2"]
    assert "a***@mailbox.example" in html
    assert "ann.lee" not in html.lower() and "bob" not in html
    assert "Number 2 in line." in html and "Number 1 in line." in html
    assert '<a href="https://shop.example/p/1" rel="noopener noreferrer">Linen shirt</a>' in html
    assert "Canvas tote" in html
    assert html.count('name="stop"') == 3  # one per alert, and "stop all"
    assert "/dashboard/static/dashboard.css?v=" in html, "the dashboard's look"
    for sub in subs.values():
        assert await status_of(client, key, sub) == "waiting", "GET changed nothing"


async def test_stop_one_then_all_by_post_and_the_page_says_so(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    subs = await ann_and_others(client, key)
    path = page_path(runtime, subs["second"])

    stopped = await client.post(path, content=f"stop={subs['first']['id']}&lang=en", headers=FORM)
    assert stopped.status_code == 303
    assert stopped.headers["location"] == f"{path}?lang=en&stopped={subs['first']['id']}"
    assert await status_of(client, key, subs["first"]) == "unsubscribed"
    assert await status_of(client, key, subs["second"]) == "waiting"
    after = await client.get(stopped.headers["location"])
    assert "Stopped: you will not hear from us about Linen shirt again." in after.text
    assert listed_skus(after.text) == ["SKU-2"]

    again = await client.post(path, content=f"stop={subs['first']['id']}", headers=FORM)
    assert again.status_code == 303, "stopping twice answers the same"

    everything = await client.post(path, content="stop=all", headers=FORM)
    assert everything.status_code == 303
    assert everything.headers["location"].endswith("?lang=en&stopped=all")
    assert await status_of(client, key, subs["second"]) == "unsubscribed"
    for other in ("bob", "sms"):
        assert await status_of(client, key, subs[other]) == "waiting"
    empty = await client.get(everything.headers["location"])
    assert "All stopped" in empty.text
    assert "You are not waiting for anything at the moment." in empty.text
    assert listed_skus(empty.text) == [] and 'value="all"' not in empty.text


async def test_a_notice_says_only_what_is_true(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    """A hand-made ``?stopped=`` names nothing still waiting, nor anybody else's."""
    subs = await ann_and_others(client, api_keys["all"])
    path = page_path(runtime, subs["first"])
    for stopped in (subs["first"]["id"], subs["bob"]["id"], "all", "<b>x</b>", str(uuid.uuid4())):
        page = await client.get(path, params={"stopped": stopped})
        assert page.status_code == 200
        assert 'role="status"' not in page.text, stopped
        assert "<b>x</b>" not in page.text


async def test_nobody_else_is_stopped_whatever_id_is_posted(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    subs = await ann_and_others(client, key)
    path = page_path(runtime, subs["first"])
    for target in (subs["bob"]["id"], subs["sms"]["id"], str(uuid.uuid4())):
        response = await client.post(path, content=f"stop={target}", headers=FORM)
        assert response.status_code == 303
        assert "stopped=" not in response.headers["location"]
    for other in ("bob", "sms", "first", "second"):
        assert await status_of(client, key, subs[other]) == "waiting"


async def test_posts_from_other_sites_and_bad_forms_are_refused(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    subs = await ann_and_others(client, key)
    path = page_path(runtime, subs["first"])
    for origin in ("https://evil.example", "null", "http://testserver.evil.example"):
        refused = await client.post(path, content="stop=all", headers={**FORM, "origin": origin})
        assert refused.status_code == 403, origin
        assert "Stop your alerts from this page" in refused.text
    as_json = await client.post(
        path,
        content="stop=all",
        headers={**FORM, "origin": "https://evil.example", "accept": "application/json"},
    )
    assert as_json.status_code == 403 and as_json.json()["error"]["code"] == "forbidden"
    assert await status_of(client, key, subs["first"]) == "waiting"

    for content, headers in [
        (b"", FORM),
        (b"stop=", FORM),
        (b"stop=nonsense", FORM),
        (b'{"stop": "all"}', {"content-type": "application/json"}),
        (b"stop=all", {"content-type": "text/plain"}),
        (b"stop=%FF%00", FORM),
        (b"stop=all&" + b"x" * 5000, FORM),
        (b"&".join(b"f%d=1" % i for i in range(11)) + b"&stop=all", FORM),
    ]:
        bad = await client.post(path, content=content, headers=headers)
        assert bad.status_code == 400, content
        bad_json = await client.post(
            path, content=content, headers={**headers, "accept": "application/json"}
        )
        assert bad_json.json()["error"]["code"] == "bad_request"
    assert await status_of(client, key, subs["first"]) == "waiting"

    same_site = await client.post(
        path, content="stop=all", headers={**FORM, "origin": "http://testserver"}
    )
    assert same_site.status_code == 303
    assert await status_of(client, key, subs["first"]) == "unsubscribed"


async def test_tokens_of_other_purposes_are_not_page_tokens_nor_the_reverse(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    sub = await subscribe(client, key, channel="email", contact=ANN, locale="en")
    sub_id = uuid.UUID(sub["id"])
    tokens = runtime.keys.tokens
    page_token = tokens.sign(SHOPPER_PAGE_TOKEN, sub_id)
    forged = page_token[:-2] + ("AA" if page_token[-2:] != "AA" else "BB")
    for other in (
        tokens.sign(UNSUBSCRIBE_TOKEN, sub_id),
        tokens.sign(CLICK_TOKEN, sub_id),
        tokens.sign(CONFIRM_TOKEN, sub_id),
        forged,
        "x",
        "A" * 44,
        "%00",
    ):
        assert (await client.get(f"/s/{other}")).status_code == 404
        posted = await client.post(f"/s/{other}", content="stop=all", headers=FORM)
        assert posted.status_code == 404
        as_json = await client.get(f"/s/{other}", headers={"accept": "application/json"})
        assert as_json.status_code == 404 and as_json.json()["error"]["code"] == "not_found"
    # The page's token opens nothing else: no unsubscribe, no confirmation, no click.
    assert (await client.post(f"/u/{page_token}")).status_code == 404
    assert (await client.post(f"/c/{page_token}")).status_code == 404
    assert (await client.get(f"/r/{page_token}")).status_code == 404
    assert await status_of(client, key, sub) == "waiting"


async def test_hostile_names_and_skus_are_only_text(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    hostile_sku = "<img/src=x/onerror=alert(1)>"
    hostile_name = '"><script>alert(1)</script><b onclick=x>'
    sub = await subscribe(
        client,
        api_keys["all"],
        sku=hostile_sku,
        channel="email",
        contact=ANN,
        locale="en",
        product={"name": hostile_name},
    )
    page = await client.get(page_path(runtime, sub), params={"lang": '"><script>x</script>'})
    assert page.status_code == 200
    assert "<script" not in page.text and "<img" not in page.text and "<b " not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;img/src=x/onerror=alert(1)&gt;" in page.text
    assert '<html lang="en">' in page.text, "an unknown ?lang= is not echoed"


async def test_the_page_speaks_the_subscriptions_language_or_the_browsers(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    zh = await subscribe(
        client, key, sku="SKU-1", channel="email", contact=ANN, product={"name": "红色T恤 M"}
    )
    await subscribe(
        client,
        key,
        sku="SKU-1",
        channel="email",
        contact="en@mailbox.example",
        locale="en",
        product={"name": "Red T-shirt M"},
    )
    french = await subscribe(
        client, key, sku="SKU-2", channel="email", contact="fr@mailbox.example", locale="fr"
    )

    page = await client.get(page_path(runtime, zh))
    assert '<html lang="zh-CN">' in page.text and "我的到货提醒" in page.text
    assert "目前排在第 1 位。" in page.text and "红色T恤 M" in page.text
    # Each button's name holds its visible words (what speech control users say) and says
    # which product it stops.
    assert 'aria-label="停止提醒：「红色T恤 M」">停止提醒</button>' in page.text

    english = await client.get(page_path(runtime, zh), params={"lang": "en"})
    assert '<html lang="en">' in english.text and "Your back-in-stock alerts" in english.text
    assert "Red T-shirt M" in english.text, "the product's name in the page's language"
    assert 'aria-label="Stop alerts for Red T-shirt M">Stop</button>' in english.text

    by_browser = await client.get(
        page_path(runtime, french), headers={"accept-language": "de;q=1, zh-TW;q=0.9, en;q=0.5"}
    )
    assert '<html lang="zh-CN">' in by_browser.text
    neither = await client.get(page_path(runtime, french), headers={"accept-language": "de"})
    assert '<html lang="en">' in neither.text


async def test_pending_requests_show_their_future_place_and_can_be_stopped(
    make_client: ClientFactory, api_keys: dict[str, str], runtime: Runtime
) -> None:
    client = make_client(opt_in=OptInSettings(double_opt_in_channels="email"))
    key = api_keys["all"]
    await subscribe(client, key, channel="sms", contact=phone(1), locale="en")  # waits at once
    pending = await subscribe(client, key, channel="email", contact=ANN, locale="en")
    assert pending["status"] == "pending"
    path = page_path(runtime, pending)
    page = await client.get(path)
    assert "Waiting for you to confirm" in page.text and "number 2 in line" in page.text
    await client.post(path, content=f"stop={pending['id']}", headers=FORM)
    assert await status_of(client, key, pending) == "unsubscribed"


async def test_an_erased_contact_shows_nothing_and_a_deleted_one_is_not_found(
    client: httpx.AsyncClient, api_keys: dict[str, str], runtime: Runtime
) -> None:
    key = api_keys["all"]
    sub = await subscribe(client, key, channel="email", contact=ANN, locale="en")
    other = await subscribe(client, key, sku="SKU-2", channel="email", contact=ANN, locale="en")
    path = page_path(runtime, sub)
    await client.post(path, content=f"stop={sub['id']}", headers=FORM)
    async with db.transaction(runtime.sessions) as session:  # retention, RETENTION_DAYS later
        await lifecycle.erase(session, [uuid.UUID(sub["id"])], db.utcnow())
    erased = await client.get(path)
    assert erased.status_code == 200
    assert "This address is no longer stored." in erased.text and listed_skus(erased.text) == []
    assert (await client.post(path, content="stop=all", headers=FORM)).status_code == 303
    assert await status_of(client, key, other) == "waiting", "an erased row names nobody"

    erase = await client.post(
        "/v1/privacy/erase", json={"contact": ANN}, headers=bearer(api_keys["admin"])
    )
    assert erase.status_code == 200
    assert (await client.get(page_path(runtime, other))).status_code == 404


@pytest.mark.parametrize("channel", ["email", "sms"])
async def test_every_message_links_to_the_page_of_its_shopper(
    client: httpx.AsyncClient,
    api_keys: dict[str, str],
    runtime: Runtime,
    start_worker: WorkerStarter,
    channel: str,
) -> None:
    key = api_keys["all"]
    contact = ANN if channel == "email" else phone(3)
    sub = await subscribe(client, key, sku="SKU-1", channel=channel, contact=contact)
    start_worker()
    assert (await post_level(client, key, 5)).status_code == 202
    await settle()
    body = (await outbox_by_subscription(runtime))[sub["id"]]
    found = re.search(r"http://127\.0\.0\.1:8000(/s/[A-Za-z0-9_-]{44})", body)
    assert found, body
    assert found.group(1) == page_path(runtime, sub)
    assert "/u/" not in body if channel == "sms" else "/u/" in body
    page = await client.get(found.group(1))
    assert "notified" not in page.text and "我们已通知您" in page.text
