"""A store pastes the README's snippet into its product pages; in headless Chromium its
shoppers subscribe, confirm and are notified, with no server code of the store's.

Everything is real: ``backinstock serve`` (and, on PostgreSQL + Redis, a worker process)
sending through aiosmtplib to the fake SMTP relay; the product pages served by their own
HTTP server on other origins; the README's snippet loading the widget by its pinned URL
and integrity; Chromium running it. The test drives the browser as a shopper would (by
keyboard where a shopper might) and reads the mail the relay received.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from backinstock import db
from backinstock.auth import service as auth
from backinstock.runtime import Runtime
from backinstock.subscriptions.models import Subscription
from tests.browser import artifacts, chromium
from tests.conftest import BACKEND
from tests.fakes.httpserver import BackgroundServer
from tests.fakes.smtp import FakeSMTP, ReceivedEmail
from tests.helpers import bearer
from tests.server import BackinstockProcess, ServerProcess, free_port
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
README_BASE = "https://notify.shop.example"
LINK = re.compile(r"http://127\.0\.0\.1:\d+(/[csr]/[A-Za-z0-9_-]{44})")
WAIT = 60  # seconds: a bound on a hang, never a measure


def readme_snippet() -> tuple[str, str]:
    """The README's snippet: its script tag and its element."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n### The notify-me widget\n")
    block = re.search(r"```html\n(.*?)```", text[start:], flags=re.S)
    assert block
    script = re.search(r"<script .*?</script>", block.group(1), flags=re.S)
    element = re.search(r"<div data-backinstock-sku=.*?</div>", block.group(1), flags=re.S)
    assert script and element
    return script.group(0), element.group(0)


@dataclass
class Product:
    sku: str
    name: str
    price: str
    locale: str
    css_class: str = ""


def product_page(base_url: str, key: str, lang: str, products: list[Product], css: str = "") -> str:
    """A store's product page with the README's snippet pasted in: the script once, the
    element per product with its SKU, language and name."""
    script, element = readme_snippet()
    script = script.replace(README_BASE, base_url)
    cards = []
    sold_out = "暂时缺货" if lang == "zh-CN" else "Sold out"
    for product in products:
        div = (
            element.replace("pk_…", key)
            .replace(
                'data-backinstock-sku="TSHIRT-RED-M"',
                f'data-backinstock-sku="{escape(product.sku)}"',
            )
            .replace('data-locale="zh-CN"', f'data-locale="{product.locale}"')
            .replace(
                'data-backinstock-product-name="红色T恤 M"',
                f'data-backinstock-product-name="{escape(product.name)}"',
            )
        )
        cards.append(
            f'<section class="product {product.css_class}"><div class="photo"></div><div>'
            f"<h1>{escape(product.name)}</h1><p class=price>{product.price}</p>"
            f'<p class="sold">{sold_out}</p>{div}</div></section>'
        )
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>Shop</title>
<style nonce="shop-css">
body {{ font: 16px/1.5 Georgia, "Songti SC", serif; color: #2b2118; background: #fbf8f3;
  margin: 0; padding: 1.5rem; }}
nav {{ margin-bottom: 1rem; }}
.product {{ display: grid; grid-template-columns: 140px 1fr; gap: 1.5rem; max-width: 40rem;
  padding: 1.5rem; background: #fff; border: 1px solid #e8e0d4; border-radius: 12px;
  margin-bottom: 1.5rem; }}
.product h1 {{ font-size: 1.4rem; margin: 0; }}
.product p {{ margin: .2rem 0 .8rem; }}
.photo {{ width: 140px; height: 140px; border-radius: 8px;
  background: linear-gradient(135deg, #d9cbb6, #a88b66); }}
.sold {{ color: #a8322d; font-weight: bold; }}
{css}
</style></head>
<body><nav><a href="/">Shop</a></nav>
{"".join(cards)}
{script}
</body></html>"""


class Shop:
    """A store's web server: its product pages on an origin of its own."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.server = BackgroundServer(Starlette(routes=[Route("/{path:path}", self._page)]))

    async def _page(self, request: Request) -> Response:
        html = self.pages.get(request.url.path)
        if html is None:
            return Response(status_code=404)
        return HTMLResponse(html, headers=self.headers)

    @property
    def origin(self) -> str:
        return self.server.base_url


@pytest.fixture
def shops() -> Iterator[tuple[Shop, Shop, Shop]]:
    """The store's own origin, another origin of a key it does not use, and a stranger's."""
    made = (Shop(), Shop(), Shop())
    for shop in made:
        shop.server.start()
    yield made
    for shop in made:
        shop.server.stop()


@pytest.fixture
def smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as fake:
        yield fake


@dataclass
class Service:
    base_url: str
    log: Path
    keys: dict[str, str] = field(default_factory=dict)


ServiceStarter = Callable[..., Service]


@pytest.fixture
def start_service(runtime: Runtime, smtp: FakeSMTP, tmp_path: Path) -> Iterator[ServiceStarter]:
    """``backinstock serve`` (and on PostgreSQL + Redis a worker) sending email to the fake
    relay, with the publishable limits given."""
    started: list[BackinstockProcess] = []

    def start(per_ip: str = "100/minute", per_contact: str = "50/hour") -> Service:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        env = {
            "BACKINSTOCK_PUBLIC_BASE_URL": base_url,
            "BACKINSTOCK_SMTP_HOST": FakeSMTP.hostname,
            "BACKINSTOCK_SMTP_PORT": str(smtp.port),
            "BACKINSTOCK_SMTP_STARTTLS": "false",
            "BACKINSTOCK_SMTP_FROM": "Shop <shop@shop.example>",
            "BACKINSTOCK_RATE_LIMIT_PER_IP": "",
            "BACKINSTOCK_RATE_LIMIT_PER_CONTACT": "",
            "BACKINSTOCK_PUBLISHABLE_RATE_LIMIT_PER_IP": per_ip,
            "BACKINSTOCK_PUBLISHABLE_RATE_LIMIT_PER_CONTACT": per_contact,
            "BACKINSTOCK_LOG_LEVEL": "INFO",
        }
        log = tmp_path / f"serve-{port}.log"
        if BACKEND == "postgres":
            worker = BackinstockProcess(
                ["worker", "--processes", "1", "--threads", "2"], env, tmp_path / "worker.log"
            )
            worker.start()
            started.append(worker)
        server = ServerProcess(env, log, port=port)
        started.append(server)
        server.start()
        return Service(base_url, log)

    yield start
    for process in reversed(started):
        process.stop()


async def publishable_key(runtime: Runtime, name: str, origin: str) -> str:
    async with db.transaction(runtime.sessions) as session:
        return await auth.create_key(session, name, [], auth.normalize_origins([origin]))


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for the module's tests: each test browses in contexts of its own."""
    async with chromium("the widget's browser test") as launched:
        yield launched


@dataclass
class Visit:
    """A browser tab and what it asked of whom."""

    page: Any
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


async def visit(browser: Any, url: str, locale: str, width: int = 760) -> Visit:
    context = await browser.new_context(
        viewport={"width": width, "height": 760}, locale=locale, reduced_motion="reduce"
    )
    page = await context.new_page()
    seen = Visit(page)
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("pageerror", lambda e: seen.problems.append(str(e)))
    page.on("dialog", lambda d: seen.problems.append(f"dialog: {d.message}"))
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) => "
        "(window.__csp = window.__csp || []).push(e.violatedDirective));"
    )
    await page.goto(url)
    return seen


def mail_to(smtp: FakeSMTP, address: str) -> list[ReceivedEmail]:
    return [m for m in smtp.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]


async def mails(smtp: FakeSMTP, address: str, count: int) -> list[ReceivedEmail]:
    await eventually(lambda: len(mail_to(smtp, address)) >= count, WAIT, f"{count} mail(s)")
    return mail_to(smtp, address)


def text_of(mail: ReceivedEmail) -> str:
    body = mail.message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def links(mail: ReceivedEmail) -> dict[str, str]:
    """The message's links by kind: c (confirm), s (shopper's page), r (tracked)."""
    found = {path[1]: path for path in LINK.findall(text_of(mail))}
    html = mail.message.get_body(("html",))
    assert html is not None and found["s"] in str(html.get_content()), "both parts link the page"
    return found


async def status_of(runtime: Runtime, sku: str) -> list[str]:
    async with runtime.sessions() as session:
        return list(
            await session.scalars(select(Subscription.status).where(Subscription.sku == sku))
        )


async def shot(target: Any, folder: Path, name: str) -> None:
    await target.screenshot(path=str(folder / name), animations="disabled")


async def page_shot(page: Any, folder: Path, name: str) -> None:
    """The page down to the end of its content."""
    box = await page.locator("main").bounding_box()
    width = page.viewport_size["width"]
    clip = {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 24}
    await page.screenshot(path=str(folder / name), clip=clip, animations="disabled")


def only_from(seen: Visit, *origins: str) -> None:
    strangers = [
        u for u in seen.requests if not u.startswith(origins) and not u.startswith("data:")
    ]
    assert strangers == [], "the widget asked nobody else"


async def test_a_shopper_subscribes_by_keyboard_confirms_and_is_notified(
    runtime: Runtime,
    api_keys: dict[str, str],
    shops: tuple[Shop, Shop, Shop],
    start_service: ServiceStarter,
    smtp: FakeSMTP,
    browser: Any,
    tmp_path: Path,
) -> None:
    shop = shops[0]
    key = await publishable_key(runtime, "shop-pages", shop.origin)
    service = start_service()
    shop.pages["/p/linen"] = product_page(
        service.base_url, key, "en", [Product("LINEN-M", "Linen shirt, blue, M", "$49.00", "en")]
    )
    folder = artifacts(tmp_path)
    seen = await visit(browser, f"{shop.origin}/p/linen", "en-US")
    page = seen.page
    from playwright.async_api import expect

    toggle = page.get_by_role("button", name="Notify me when available")
    await expect(toggle).to_be_visible()
    assert await toggle.get_attribute("aria-expanded") == "false"
    # The outcome's live region is in the accessibility tree before it has anything to say:
    # a screen reader announces only the changes of a region it already knows.
    await expect(page.get_by_role("status")).to_have_count(1)
    await expect(page.get_by_role("status")).to_have_text("")

    # By keyboard: Tab from the page's own link reaches the button; Enter opens the form
    # and puts the cursor in the email field.
    await page.get_by_role("link", name="Shop").focus()
    await page.keyboard.press("Tab")
    await expect(toggle).to_be_focused()
    await page.keyboard.press("Enter")
    field = page.get_by_label("Email address")
    await expect(field).to_be_focused()
    assert await toggle.get_attribute("aria-expanded") == "true"
    assert await page.get_by_role("radio", name="Email").is_checked()

    # The API refuses the address: its 422 names the field, and the widget says so there.
    await page.keyboard.type("ann.lee@@mailbox")
    async with page.expect_response(lambda r: r.url.endswith("/v1/subscriptions")) as refused:
        await page.keyboard.press("Enter")
    assert (await refused.value).status == 422
    error = page.get_by_text("Enter a valid email address, such as name@example.com.")
    await expect(error).to_be_visible()
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_be_focused()
    await shot(page.locator("section.product"), folder, "widget-en-error.png")

    # Escape closes the form and gives the focus back to the button.
    await page.keyboard.press("Escape")
    await expect(toggle).to_be_focused()
    await expect(field).to_be_hidden()
    await page.keyboard.press("Enter")

    await field.fill("")
    await page.keyboard.type("Ann.Lee@Mailbox.example")
    async with page.expect_response(lambda r: r.url.endswith("/v1/subscriptions")) as made:
        await page.keyboard.press("Enter")
    assert (await made.value).status == 201
    status = page.get_by_role("status")
    await expect(status).to_contain_text(
        "Check your inbox: we sent a link to A***@mailbox.example."
    )
    await expect(status).to_contain_text("Once you confirm, you will be number 1 in line.")
    await expect(status).to_be_focused()
    await expect(toggle).to_be_hidden()
    await shot(page.locator("section.product"), folder, "widget-en-sent.png")
    assert await status_of(runtime, "LINEN-M") == ["pending"]

    # The confirmation arrives; its link opens a page whose button confirms.
    (confirmation,) = await mails(smtp, "ann.lee@mailbox.example", 1)
    assert confirmation.message["Subject"] == "Confirm your alert for Linen shirt, blue, M"
    sent = links(confirmation)
    await page.goto(service.base_url + sent["c"])
    await page.get_by_role("button", name="Confirm / 确认").click()
    await expect(page.get_by_text("You are number 1 in line.")).to_be_visible()
    assert await status_of(runtime, "LINEN-M") == ["waiting"]

    # The next restock reaches her, with a link to her own page.
    async with httpx.AsyncClient(base_url=service.base_url) as client:
        restock = await client.post(
            "/v1/restocks",
            json={"event_id": "erp-1", "sku": "LINEN-M", "available": 3, "location": "main"},
            headers=bearer(api_keys["inventory"]),
        )
    assert restock.status_code == 202 and restock.json()["first_wave"] == 1
    _, news = await mails(smtp, "ann.lee@mailbox.example", 2)
    assert news.message["Subject"] == "Linen shirt, blue, M is back in stock"
    assert "Buy it now: " in text_of(news)
    assert links(news)["s"] == sent["s"], "one page per shopper"

    # Her page: what she waits for, masked; Stop is a POST, and the page says it worked.
    await page.goto(service.base_url + links(news)["s"])
    await expect(page.get_by_role("heading", name="Your back-in-stock alerts")).to_be_visible()
    await expect(page.get_by_text("A***@mailbox.example")).to_be_visible()
    await expect(page.get_by_text("You keep your place, number 1 in line")).to_be_visible()
    await page_shot(page, folder, "shopper-page-en.png")
    await page.get_by_role("button", name="Stop alerts for Linen shirt, blue, M").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Stopped: you will not hear from us about Linen shirt, blue, M again."
    )
    await expect(
        page.get_by_text("You are not waiting for anything at the moment.")
    ).to_be_visible()
    assert await status_of(runtime, "LINEN-M") == ["unsubscribed"]

    assert seen.problems == [] and await page.evaluate("window.__csp || []") == []
    only_from(seen, shop.origin, service.base_url)
    assert "ann.lee" not in service.log.read_text().lower(), "no contact in the server's log"


async def test_a_chinese_page_with_two_products_and_stop_all(
    runtime: Runtime,
    shops: tuple[Shop, Shop, Shop],
    start_service: ServiceStarter,
    smtp: FakeSMTP,
    browser: Any,
    tmp_path: Path,
) -> None:
    shop = shops[0]
    key = await publishable_key(runtime, "shop-pages", shop.origin)
    service = start_service()
    products = [
        Product("TSHIRT-RED-M", "红色T恤 M", "¥99.00", "zh-CN"),
        Product("MUG-BLUE", "蓝色马克杯", "¥39.00", "zh-CN", css_class="accent"),
        Product("MUG-GREEN", "绿色马克杯", "¥39.00", "zh-CN"),
    ]
    accent = ".accent { --backinstock-accent: #9a3412; --backinstock-radius: 999px; }"
    shop.pages["/p/red"] = product_page(service.base_url, key, "zh-CN", products, accent)
    folder = artifacts(tmp_path)
    seen = await visit(browser, f"{shop.origin}/p/red", "zh-CN")
    page = seen.page
    from playwright.async_api import expect

    buttons = page.get_by_role("button", name="到货通知我")
    await expect(buttons).to_have_count(3)
    # The page restyles the second one with custom properties alone.
    colours = [
        await b.evaluate("(e) => getComputedStyle(e).backgroundColor") for b in await buttons.all()
    ]
    assert colours == ["rgb(29, 36, 48)", "rgb(154, 52, 18)", "rgb(29, 36, 48)"]

    cards = page.locator("section.product")
    for index in range(2):
        card = cards.nth(index)
        await card.get_by_role("button", name="到货通知我").click()
        await card.get_by_label("邮箱地址").fill("li.lei@mailbox.example")
        if index == 0:
            await card.get_by_role("radio", name="短信").check()
            await expect(card.get_by_label("手机号码")).to_be_visible()
            await shot(cards.nth(0), folder, "widget-zh-CN.png")
            await card.get_by_role("radio", name="邮件").check()
            await card.get_by_label("邮箱地址").fill("li.lei@mailbox.example")
        await card.get_by_role("button", name="提交").click()
        await expect(card.get_by_role("status")).to_contain_text(
            "请查收邮件：确认链接已发送至 l***@mailbox.example，打开链接即可确认。"
            "确认后，您将排在第 1 位。"
        )
    await shot(cards.nth(1), folder, "widget-zh-CN-sent.png")
    # By text message: a mainland number as shoppers type it.
    phone_card = cards.nth(2)
    await phone_card.get_by_role("button", name="到货通知我").click()
    await phone_card.get_by_role("radio", name="短信").check()
    await phone_card.get_by_label("手机号码").fill("138 0013 8000")
    await phone_card.get_by_role("button", name="提交").click()
    await expect(phone_card.get_by_role("status")).to_contain_text(
        "请查看短信：验证码和链接已发送至 +86 138****8000，回复验证码或打开链接即可确认。"
    )

    confirmations = await mails(smtp, "li.lei@mailbox.example", 2)
    assert {m.message["Subject"] for m in confirmations} == {
        "请确认「红色T恤 M」到货提醒",
        "请确认「蓝色马克杯」到货提醒",
    }
    await page.goto(service.base_url + links(confirmations[0])["s"])
    await expect(page.get_by_role("heading", name="我的到货提醒")).to_be_visible()
    await expect(page.locator("li.watch")).to_have_count(2)
    await expect(page.get_by_text("等待您确认").first).to_be_visible()
    await page_shot(page, folder, "shopper-page-zh-CN.png")
    await page.get_by_role("button", name="全部停止").click()
    await expect(page.get_by_role("status")).to_have_text(
        "已全部停止：不会再收到这些商品的到货通知。"
    )
    await expect(page.locator("li.watch")).to_have_count(0)
    for sku in ("TSHIRT-RED-M", "MUG-BLUE"):
        assert await status_of(runtime, sku) == ["unsubscribed"]
    assert await status_of(runtime, "MUG-GREEN") == ["pending"], "another contact's"
    assert seen.problems == []
    only_from(seen, shop.origin, service.base_url)


async def test_refusals_show_in_the_widget(
    runtime: Runtime,
    shops: tuple[Shop, Shop, Shop],
    start_service: ServiceStarter,
    browser: Any,
) -> None:
    """Another origin (readably refused, 403), a stranger's origin (no CORS grant at all),
    an invalid field (422) and a limit (429 with Retry-After), each in the widget's words;
    the page's hostile product name never runs."""
    shop, other, stranger = shops
    key = await publishable_key(runtime, "shop-pages", shop.origin)
    await publishable_key(runtime, "other-pages", other.origin)  # a grant for its origin only
    # Two requests an hour from one address: the third is refused.
    service = start_service(per_ip="2/hour")
    hostile = '<img src=x onerror="window.__pwned=1">"><b>'
    products = [
        Product("SKU-1", hostile, "$1", "en"),
        Product("SKU-2", "Canvas tote", "$2", "en"),
    ]
    for site in shops:
        site.pages["/p"] = product_page(service.base_url, key, "en", products)
        # A strict policy: the widget needs its origin in script-src and connect-src, and
        # no inline style (its stylesheet is a constructable one).
        site.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src {service.base_url}; "
            f"connect-src {service.base_url}; style-src 'nonce-shop-css'; img-src data:"
        )
    from playwright.async_api import expect

    async def submit(seen: Visit, index: int, contact: str) -> Any:
        card = seen.page.locator("section.product").nth(index)
        await card.get_by_role("button", name="Notify me when available").click()
        await card.get_by_label("Email address").fill(contact)
        await card.get_by_role("button", name="Notify me", exact=True).click()
        return card

    # The key used on a page of another origin: the API answers 403, the widget says no.
    elsewhere = await visit(browser, f"{other.origin}/p", "en-US")
    card = await submit(elsewhere, 0, "ann@mailbox.example")
    await expect(card.get_by_role("status")).to_have_text(
        "Alerts are not available on this page at the moment."
    )
    # A stranger's origin gets no CORS grant: the browser never sends the request.
    stranger_tab = await visit(browser, f"{stranger.origin}/p", "en-US")
    card = await submit(stranger_tab, 0, "ann@mailbox.example")
    await expect(card.get_by_role("status")).to_have_text(
        "We could not reach the server. Check your connection and try again."
    )
    assert await status_of(runtime, "SKU-1") == []

    seen = await visit(browser, f"{shop.origin}/p", "en-US")
    async with seen.page.expect_response(lambda r: r.url.endswith("/v1/subscriptions")) as bad:
        card = await submit(seen, 0, "ann")
    assert (await bad.value).status == 422
    await expect(card.get_by_text("Enter a valid email address")).to_be_visible()
    await card.get_by_label("Email address").fill("ann@mailbox.example")
    await card.get_by_role("button", name="Notify me", exact=True).click()
    await expect(card.get_by_role("status")).to_contain_text("Check your inbox")

    async with seen.page.expect_response(lambda r: r.url.endswith("/v1/subscriptions")) as busy:
        card = await submit(seen, 1, "ann@mailbox.example")
    refused = await busy.value
    assert refused.status == 429 and int(refused.headers["retry-after"]) > 60
    await expect(card.get_by_role("status")).to_have_text(
        re.compile(r"^Too many attempts\. Try again in \d+ minutes\.$")
    )
    assert await status_of(runtime, "SKU-1") == ["pending"]
    assert await status_of(runtime, "SKU-2") == []

    styled = seen.page.get_by_role("button", name="Notify me when available").first
    assert await styled.evaluate("(e) => getComputedStyle(e).backgroundColor") == "rgb(29, 36, 48)"
    for tab in (elsewhere, stranger_tab, seen):
        assert await tab.page.evaluate("window.__pwned === undefined")
        assert tab.problems == [], tab.problems
        assert await tab.page.evaluate("window.__csp || []") == []
