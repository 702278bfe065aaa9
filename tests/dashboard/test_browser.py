"""The dashboard end to end in headless Chromium: a real server and worker, shoppers
subscribed and notified through the API, then sign in and read every chart.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` package; without them the test fails, saying what to install.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from backinstock import db
from backinstock.conversions.models import Conversion, Order
from backinstock.coupons.models import Coupon
from backinstock.dispatch.models import Notification, Status
from backinstock.restocks.models import HoldState, StockHold
from backinstock.runtime import Runtime
from tests.browser import artifacts, chromium
from tests.conftest import BACKEND
from tests.helpers import bearer, phone, subscription_body
from tests.server import BackinstockProcess, ServerProcess
from tests.waiting import eventually

ENV = {
    "BACKINSTOCK_RATE_LIMIT_PER_IP": "",
    "BACKINSTOCK_RATE_LIMIT_PER_CONTACT": "",
    "BACKINSTOCK_LOG_LEVEL": "WARNING",
}
CHARTS = ["chart-funnel", "chart-channels", "chart-timeseries", "chart-demand", "chart-coupons"]

# Who waits for what: SKU-A is the most wanted and never restocked; SKU-B is restocked, so
# its three shoppers (one per channel) are notified and stay in its queue. Some shoppers
# carry a segment: two of SKU-A's are "oily", SKU-B's SMS and WeChat ones "sensitive-skin".
SHOPPERS = [
    ("SKU-A", "sms", "oily"),
    ("SKU-A", "sms", None),
    ("SKU-A", "sms", None),
    ("SKU-A", "email", "oily"),
    ("SKU-A", "email", None),
    ("SKU-B", "sms", "sensitive-skin"),
    ("SKU-B", "email", None),
    ("SKU-B", "wechat", "sensitive-skin"),
    ("SKU-C", "email", None),
]
PRODUCTS = {"SKU-A": "Linen shirt, blue, M", "SKU-B": "红色T恤 M", "SKU-C": "Canvas tote"}


def _contact(channel: str, n: int) -> str:
    return {"sms": phone(n), "email": f"shopper{n}@qq.com", "wechat": f"oWx_{n:020d}"}[channel]


@pytest.fixture
def server(runtime: Runtime, tmp_path: Path) -> Iterator[ServerProcess]:
    """``backinstock serve`` on a free port; on PostgreSQL + Redis a worker process too (the
    embedded mode runs its workers inside the server)."""
    worker = None
    if BACKEND == "postgres":
        worker = BackinstockProcess(
            ["worker", "--processes", "1", "--threads", "2"], ENV, tmp_path / "worker.log"
        )
        worker.start()
    try:
        with ServerProcess(ENV, tmp_path / "serve.log") as process:
            yield process
    finally:
        if worker is not None:
            worker.stop()


async def _wait_for_sent(runtime: Runtime, expected: int) -> None:
    async def all_sent() -> bool:  # by the worker process the page's server runs beside
        async with runtime.sessions() as session:
            sent = await session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(Notification.status == Status.SENT)
            )
        return sent == expected

    await eventually(all_sent, 60, f"{expected} messages sent")


async def _seed_through_the_api(base_url: str, keys: dict[str, str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for n, (sku, channel, segment) in enumerate(SHOPPERS):
            body = subscription_body(
                sku=sku,
                channel=channel,
                contact=_contact(channel, n),
                product={"name": PRODUCTS[sku], "url": f"https://shop.example/p/{sku}"},
                attributes={"segment": segment} if segment else {},
            )
            response = await client.post(
                "/v1/subscriptions", json=body, headers=bearer(keys["subscribe"])
            )
            assert response.status_code == 201, response.text
            if sku == "SKU-B":
                ids[channel] = response.json()["id"]
        restock = await client.post(
            "/v1/restocks",
            json={"event_id": "erp-1", "sku": "SKU-B", "available": 10, "location": "main"},
            headers=bearer(keys["inventory"]),
        )
        assert restock.status_code == 202, restock.text
    return ids


async def _seed_clicks_orders_and_coupons(
    runtime: Runtime, sku_b: dict[str, str], revenue: Decimal = Decimal("199.00")
) -> None:
    """What shoppers do after the message (follow links, buy, redeem), written as rows: the
    SMS and WeChat shoppers click, the WeChat one buys (for 199.00 CNY) with a coupon. Each
    of the three had a unit held: the buyer's was consumed, the SMS shopper's expired, the
    email shopper's still runs."""
    now = db.utcnow()
    async with db.transaction(runtime.sessions) as session:
        fates = {"wechat": HoldState.CONSUMED, "sms": HoldState.RELEASED, "email": HoldState.HELD}
        for channel, state in fates.items():
            message = await session.scalar(
                select(Notification).where(
                    Notification.subscription_id == uuid.UUID(sku_b[channel])
                )
            )
            assert message is not None and message.wave_id is not None
            session.add(
                StockHold(
                    notification_id=message.id,
                    wave_id=message.wave_id,
                    sku="SKU-B",
                    until=now + timedelta(minutes=30),
                    state=state.value,
                )
            )
        clicked = [sku_b["sms"], sku_b["wechat"]]
        await session.execute(
            update(Notification)
            .where(Notification.subscription_id.in_([uuid.UUID(i) for i in clicked]))
            .values(clicked_at=now, click_count=1)
        )
        order = Order(order_id="o-1", currency="CNY", total=revenue, occurred_at=now, response="{}")
        session.add(order)
        await session.flush()
        buyer = uuid.UUID(sku_b["wechat"])
        session.add(
            Conversion(
                order_pk=order.id,
                subscription_id=buyer,
                sku="SKU-B",
                channel="wechat",
                method="coupon",
                revenue=revenue,
                currency="CNY",
                converted_at=now,
            )
        )
        issued = now - timedelta(minutes=5)
        session.add_all(
            [
                Coupon(
                    code="BIS-AAAA1",
                    subscription_id=buyer,
                    sku="SKU-B",
                    channel="wechat",
                    issued_at=issued,
                    redeemed_at=now,
                    order_id=order.id,
                ),
                Coupon(
                    code="BIS-BBBB2",
                    subscription_id=uuid.UUID(sku_b["email"]),
                    sku="SKU-B",
                    channel="email",
                    issued_at=issued,
                ),
            ]
        )


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for the module's tests: each test browses in contexts of its own."""
    async with chromium("the dashboard's browser test") as launched:
        yield launched


@pytest.fixture
def screenshot(tmp_path: Path) -> Path:
    """Where the full-page screenshot goes: BACKINSTOCK_TEST_ARTIFACTS, else a tmp folder."""
    return artifacts(tmp_path) / "dashboard.png"


def _chart_data(chart_id: str) -> str:
    return f"""() => {{
        const chart = Chart.getChart(document.getElementById("{chart_id}"));
        if (!chart) return null;
        return {{
            labels: chart.data.labels,
            datasets: chart.data.datasets.map((d) => ({{label: d.label, data: d.data}})),
        }};
    }}"""


async def test_the_dashboard_signs_in_and_draws_every_chart(
    runtime: Runtime,
    api_keys: dict[str, str],
    server: ServerProcess,
    browser: Any,
    screenshot: Path,
) -> None:
    sku_b = await _seed_through_the_api(server.base_url, api_keys)
    await _wait_for_sent(runtime, expected=3)
    await _seed_clicks_orders_and_coupons(runtime, sku_b)

    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, reduced_motion="reduce", locale="en-US"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    await page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) => "
        "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));"
    )

    # Not signed in: the dashboard sends the browser to the form.
    await page.goto(f"{server.base_url}/dashboard")
    assert page.url == f"{server.base_url}/dashboard/login"

    # A wrong key: the form again, with a message.
    await page.fill("#key", "bis_wrong")
    await page.click("button[type=submit]")
    assert await page.locator("[role=alert]").inner_text() != ""
    assert page.url.endswith("/dashboard/login")
    problems.clear()  # the browser logs the 401 answer to that form

    await page.fill("#key", api_keys["stats"])
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.base_url}/dashboard")
    await page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    cookies = await context.cookies()
    session_cookie = next(c for c in cookies if c["name"] == "bis_session")
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"

    for chart_id in CHARTS:
        assert await page.evaluate(_chart_data(chart_id)) is not None, f"{chart_id} not drawn"

    funnel = await page.evaluate(_chart_data("chart-funnel"))
    assert funnel["labels"] == ["Subscribed", "Notified", "Delivered", "Clicked", "Converted"]
    assert funnel["datasets"][0]["data"] == [9, 3, 3, 2, 1]
    figures = await page.locator("#funnel-figures").inner_text()
    assert "CN¥199.00" in figures or "CNY 199.00" in figures
    assert await page.locator('[data-figure="click_rate"]').inner_text() == "66.7%"

    channels = await page.evaluate(_chart_data("chart-channels"))
    by_channel = {d["label"]: d["data"] for d in channels["datasets"]}
    assert by_channel == {
        "SMS": [4, 1, 1, 1, 0],
        "Email": [4, 1, 1, 0, 0],
        "WeChat": [1, 1, 1, 1, 1],
    }
    channel_rows = await page.locator("#channel-table tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in channel_rows] == ["SMS", "Email", "WeChat"]

    series = await page.evaluate(_chart_data("chart-timeseries"))
    totals = {d["label"]: sum(d["data"]) for d in series["datasets"]}
    assert totals == {"Notifications sent": 3, "Clicks": 2, "Conversions": 1}
    assert series["datasets"][0]["data"][-1] == 3, "today's bucket holds today's sends"

    demand = await page.evaluate(_chart_data("chart-demand"))
    assert demand["labels"] == ["SKU-A", "SKU-B", "SKU-C"]
    assert demand["datasets"][0]["data"] == [5, 3, 1]
    rows = await page.locator("#demand-table tbody tr").all_inner_texts()
    assert [row.split("\t")[1:4] for row in rows] == [
        ["SKU-A", PRODUCTS["SKU-A"], "5"],
        ["SKU-B", PRODUCTS["SKU-B"], "3"],
        ["SKU-C", PRODUCTS["SKU-C"], "1"],
    ]

    coupons = await page.evaluate(_chart_data("chart-coupons"))
    assert coupons["datasets"][0]["data"] == [2, 1]
    assert await page.locator('[data-figure="redemption_rate"]').inner_text() == "50%"
    held = await page.locator("#hold-figures").inner_text()
    assert held.split("\n")[1::2] == ["3", "1", "1", "33.3%"], held

    # A row per segment, the shoppers without one first; the filter offers the segments seen.
    segment_rows = await page.locator("#segment-table tbody tr").all_inner_texts()
    assert [row.split("\t")[:7] for row in segment_rows] == [
        ["(no segment)", "5", "5", "1", "1", "0", "0"],
        ["oily", "2", "2", "0", "0", "0", "0"],
        ["sensitive-skin", "2", "2", "2", "2", "2", "1"],
    ]
    options = page.locator("#segment-options option")
    assert [await o.get_attribute("value") for o in await options.all()] == [
        "oily",
        "sensitive-skin",
    ]

    # The segment filter narrows every section, and stays in the page's address.
    await page.fill("input[name=segment]", "sensitive-skin")
    await page.click("#filters button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")
    assert "segment=sensitive-skin" in page.url
    narrowed = await page.evaluate(_chart_data("chart-funnel"))
    assert narrowed["datasets"][0]["data"] == [2, 2, 2, 2, 1]
    assert "segment sensitive-skin" in await page.locator("#funnel .scope").inner_text()
    narrowed_series = await page.evaluate(_chart_data("chart-timeseries"))
    assert sum(narrowed_series["datasets"][0]["data"]) == 2
    narrowed_demand = await page.evaluate(_chart_data("chart-demand"))
    assert narrowed_demand["labels"] == ["SKU-B"]
    assert narrowed_demand["datasets"][0]["data"] == [2]
    only = await page.locator("#segment-table tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in only] == ["sensitive-skin"]
    segment_csv = await page.get_attribute("#csv-segments", "href")
    assert segment_csv is not None and "segment=sensitive-skin" in segment_csv
    await page.screenshot(path=str(screenshot.with_name("dashboard-segment.png")), full_page=True)
    await page.fill("input[name=segment]", "")
    await page.click("#filters button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")

    # The hourly view redraws the time series from the same endpoint.
    await page.click("button[data-interval=hour]")
    await page.wait_for_selector("body[data-state=ready]")
    hourly = await page.evaluate(_chart_data("chart-timeseries"))
    assert sum(hourly["datasets"][0]["data"]) == 3
    assert hourly["labels"][-1].endswith(":00")

    # CSV downloads work with the session cookie alone.
    href = await page.get_attribute("#csv-funnel", "href")
    assert href is not None and "format=csv" in href
    csv = await page.request.get(f"{server.base_url}{href}")
    assert csv.status == 200 and csv.headers["content-type"].startswith("text/csv")

    await page.screenshot(path=str(screenshot), full_page=True)

    assert await page.evaluate("window.__csp || []") == [], "the page broke its own CSP"
    assert problems == []

    # Signing out ends the session for the page and for the figures.
    await page.click("text=Sign out")
    await page.wait_for_url(f"{server.base_url}/dashboard/login")
    after = await page.request.get(f"{server.base_url}/v1/stats/funnel")
    assert after.status == 401
    await context.close()


async def _sign_in(browser: Any, base_url: str, key: str, width: int, locale: str) -> Any:
    context = await browser.new_context(
        viewport={"width": width, "height": 900}, reduced_motion="reduce", locale=locale
    )
    page = await context.new_page()
    await page.goto(f"{base_url}/dashboard/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base_url}/dashboard")
    return page


async def _open(page: Any, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=20_000)


async def _all_charts_drawn(page: Any) -> bool:
    drawn = [await page.evaluate(_chart_data(chart_id)) for chart_id in CHARTS]
    return all(chart is not None for chart in drawn)


# Where each figure's text is, against its card: the text's own box (a Range over it), not
# the block's, which always has the card's width however far its text runs.
_FIGURE_BOXES = """() => Array.from(document.querySelectorAll(".figures dd")).map((dd) => {
    const range = document.createRange();
    range.selectNodeContents(dd);
    const text = range.getBoundingClientRect();
    const card = dd.parentElement.getBoundingClientRect();
    return {figure: dd.dataset.figure, text: dd.textContent, textLeft: text.left,
            textRight: text.right, cardLeft: card.left, cardRight: card.right};
})"""

# Every cell of a table's last column against the visible part of its table's scroll box.
_LAST_COLUMN = """(id) => {
    const table = document.getElementById(id);
    const wrap = table.closest(".table-wrap").getBoundingClientRect();
    const cells = Array.from(table.querySelectorAll("tr"))
        .map((row) => row.cells[row.cells.length - 1])
        .filter((cell) => cell && cell.colSpan === 1 && cell.getClientRects().length > 0);
    return cells.map((cell) => {
        const box = cell.getBoundingClientRect();
        return {text: cell.textContent, left: box.left, right: box.right, width: box.width,
                wrapLeft: wrap.left, wrapRight: wrap.right};
    });
}"""


async def _assert_content_fits(page: Any) -> None:
    boxes = await page.evaluate(_FIGURE_BOXES)
    revenue = next(b for b in boxes if b["figure"] == "revenue")
    assert "1,234,567.89" in revenue["text"], revenue
    for box in boxes:
        assert box["textLeft"] >= box["cardLeft"] and box["textRight"] <= box["cardRight"], box
    for table in ("demand-table", "channel-table", "segment-table"):
        cells = await page.evaluate(_LAST_COLUMN, table)
        assert len(cells) >= 3, table
        for cell in cells:
            assert cell["width"] > 0 and cell["left"] >= cell["wrapLeft"] - 0.5, cell
            assert cell["right"] <= cell["wrapRight"] + 0.5, f"{table}: last column cut: {cell}"


async def test_the_dashboard_copes_with_hand_edited_addresses_and_fits_its_content(
    runtime: Runtime, api_keys: dict[str, str], server: ServerProcess, browser: Any
) -> None:
    sku_b = await _seed_through_the_api(server.base_url, api_keys)
    await _wait_for_sent(runtime, expected=3)
    await _seed_clicks_orders_and_coupons(runtime, sku_b, revenue=Decimal("1234567.89"))
    base = f"{server.base_url}/dashboard"
    page = await _sign_in(browser, server.base_url, api_keys["stats"], 1280, "en-US")
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))

    # A period written by hand: read as the period it names, and said so.
    await _open(page, f"{base}?period=7d")
    assert await page.get_attribute("body", "data-state") == "ready"
    assert "7d" in await page.locator("#notice").inner_text()
    assert await page.locator("select[name=period]").input_value() == "7"
    assert page.url.endswith("?period=7") and await _all_charts_drawn(page)

    # Nonsense: the default period, a message in place, every chart.
    await _open(page, f"{base}?period=fortnight&channel=fax&sku=红色 T&segment=Sensitive Skin")
    assert await page.get_attribute("body", "data-state") == "ready"
    notice = await page.locator("#notice").inner_text()
    assert "fortnight" in notice and "fax" in notice and "红色 T" in notice
    assert "Sensitive Skin" in notice
    assert await page.locator("input[name=segment]").input_value() == ""
    assert await page.locator("select[name=period]").input_value() == "30"
    assert await _all_charts_drawn(page)

    # Reversed dates: swapped, said, and the figures of the period between them.
    today = db.utcnow().date()
    earlier = today - timedelta(days=10)
    await _open(page, f"{base}?period=custom&since={today}&until={earlier}")
    assert await page.get_attribute("body", "data-state") == "ready"
    assert "swapped" in await page.locator("#notice").inner_text()
    assert await page.locator("input[name=since]").input_value() == str(earlier)
    assert await page.locator("input[name=until]").input_value() == str(today)
    assert await _all_charts_drawn(page)
    funnel = await page.evaluate(_chart_data("chart-funnel"))
    assert funnel["datasets"][0]["data"][:2] == [9, 3]

    # The over-time chart of a fresh instance starts the day before its first activity.
    await _open(page, base)
    assert await page.locator("#notice").is_hidden()
    series = await page.evaluate(_chart_data("chart-timeseries"))
    yesterday = today - timedelta(days=1)
    assert series["labels"] == [str(yesterday), str(today)]
    assert series["datasets"][0]["data"] == [0, 3]

    # An API failure is said in its own section; the other sections still draw.
    await page.route("**/v1/stats/timeseries?*", lambda route: route.fulfill(status=503))
    await page.click("#filters button[type=submit]")
    await page.wait_for_selector("body[data-state=error]")
    assert "503" in await page.locator("#timeseries .card-error").inner_text()
    assert await page.evaluate(_chart_data("chart-timeseries")) is None
    for chart_id in ("chart-funnel", "chart-channels", "chart-demand", "chart-coupons"):
        assert await page.evaluate(_chart_data(chart_id)) is not None, chart_id
    await page.unroute("**/v1/stats/timeseries?*")
    await page.click("#filters button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")
    assert await page.locator(".card-error").count() == 0

    # A seven-figure revenue stays inside its card, and no table loses its last column, on a
    # laptop and on a phone (where numbers and dates are formatted the Chinese way).
    await _assert_content_fits(page)
    phone_page = await _sign_in(browser, server.base_url, api_keys["stats"], 390, "zh-CN")
    await _open(phone_page, base)
    await _assert_content_fits(phone_page)
    assert problems == []
