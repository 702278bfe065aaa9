"""The WeChat sender and token cache against the fake WeChat API, through real httpx (and a
real Redis for the shared cache)."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from backinstock.config import WeChatSettings
from backinstock.senders.base import Outcome, OutgoingMessage, SendResult
from backinstock.senders.wechat import (
    AccessTokenCache,
    WeChatSender,
    fit_value,
    page_with_token,
)
from tests.conftest import REDIS_URL
from tests.fakes.wechat import FakeWeChat

TEMPLATE = "tmpl-back-in-stock"


# --------------------------------------------------------------------------------- helpers
def settings_for(fake: FakeWeChat, **overrides: Any) -> WeChatSettings:
    values: dict[str, Any] = {
        "wechat_app_id": fake.appid,
        "wechat_app_secret": fake.secret,
        "wechat_template_id": TEMPLATE,
        "wechat_api_base": fake.base_url,
        **overrides,
    }
    return WeChatSettings(**values)


def message(i: int, *, locale: str = "zh-CN", **data: Any) -> OutgoingMessage:
    return OutgoingMessage(
        notification_id=uuid.uuid4(),
        channel="wechat",
        to=f"o-user-{i}",
        to_masked="o-u***",
        text=f"「商品{i}」到货了",
        link=f"https://shop.example/r/tok{i}",
        data={"product_url": f"https://shop.example/p/{i}", "locale": locale, **data},
    )


def batch(n: int, start: int = 0) -> list[OutgoingMessage]:
    return [message(i) for i in range(start, start + n)]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


async def delivered_at_least(fake: FakeWeChat, count: int) -> None:
    delivered = await asyncio.to_thread(fake.wait_for_messages, count, 30)
    assert delivered, f"fewer than {count} messages delivered"


def outcomes(results: list[SendResult]) -> Counter[Outcome]:
    return Counter(r.outcome for r in results)


def assert_nothing_twice(fake: FakeWeChat) -> None:
    receivers = Counter(m.touser for m in fake.messages)
    assert all(count == 1 for count in receivers.values()), receivers.most_common(3)


@pytest.fixture
def fake() -> Iterator[FakeWeChat]:
    with FakeWeChat(refused_users={"o-user-3", "o-user-7"}) as server:
        yield server


@pytest.fixture
async def tokens(fake: FakeWeChat) -> AsyncIterator[AccessTokenCache]:
    cache = AccessTokenCache(settings_for(fake))
    yield cache
    await cache.close()


@pytest.fixture
async def sender(fake: FakeWeChat, tokens: AccessTokenCache) -> AsyncIterator[WeChatSender]:
    wechat = WeChatSender(settings_for(fake), tokens)
    yield wechat
    await wechat.close()


async def _forget_wechat_keys(client: Redis) -> None:
    async for key in client.scan_iter(match="bis:wechat:*"):
        await client.delete(key)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    # The suite's own Redis database, and only the keys the token cache writes in it.
    client = Redis.from_url(REDIS_URL)
    await _forget_wechat_keys(client)
    yield client
    await _forget_wechat_keys(client)
    await client.aclose()


# ------------------------------------------------------------------------------- delivery
async def test_batch_of_30_delivered_with_template_page_data_and_lang() -> None:
    with FakeWeChat(valid_template_ids={TEMPLATE}) as fake:
        tokens = AccessTokenCache(settings_for(fake))
        wechat = WeChatSender(settings_for(fake), tokens)
        messages = [message(i, locale="zh-CN" if i % 2 else "en") for i in range(30)]
        messages[0] = message(0, locale="en", product_name="Blue mug, large, with lid, 400ml")
        results = await wechat.send_batch(messages)
        await wechat.close()
        await tokens.close()

    assert [r.notification_id for r in results] == [m.notification_id for m in messages]
    assert outcomes(results) == {Outcome.SENT: 30}
    delivered = {m.touser: m for m in fake.messages}
    assert len(fake.messages) == len(delivered) == 30 and fake.stable_token_calls == 1
    for i, (msg, result) in enumerate(zip(messages, results, strict=True)):
        got = delivered[msg.to]
        assert result.provider_id == str(got.msgid) and result.error is None
        assert (got.template_id, got.miniprogram_state) == (TEMPLATE, "formal")
        assert got.page == f"pages/product/index?bis_token=tok{i}"
        assert got.lang == ("zh_CN" if i % 2 else "en_US")
    assert delivered["o-user-1"].data == {
        "thing1": {"value": "「商品1」到货了"},  # no product_name: the text stands in
        "phrase2": {"value": "到货"},
        "thing3": {"value": "「商品1」到货了"},
    }
    assert delivered["o-user-0"].data == {
        "thing1": {"value": "Blue mug, large, wi…"},  # thing: at most 20 characters
        "phrase2": {"value": "到货"},  # phrase takes Han characters only, see fit_value
        "thing3": {"value": "「商品0」到货了"},
    }


async def test_custom_field_map_and_page_with_query(fake: FakeWeChat) -> None:
    tokens = AccessTokenCache(settings_for(fake))
    wechat = WeChatSender(
        settings_for(fake, wechat_page="pages/item/index?from=bis"),
        tokens,
        field_map={"thing5": "data.store", "character_string2": "product_name"},
    )
    msg = message(1, store="上海南京西路旗舰店", product_name="SKU-" + "9" * 40)
    [result] = await wechat.send_batch([msg])
    await wechat.close()
    await tokens.close()
    [got] = fake.messages
    assert result.outcome is Outcome.SENT
    assert got.page == "pages/item/index?from=bis&bis_token=tok1"
    assert got.data == {
        "thing5": {"value": "上海南京西路旗舰店"},
        "character_string2": {"value": "SKU-" + "9" * 28},  # cut at 32, no ellipsis
    }
    with pytest.raises(ValueError, match="unknown WeChat field source"):
        WeChatSender(settings_for(fake), tokens, field_map={"thing1": "price"})


@pytest.mark.parametrize(
    ("key", "value", "fitted"),
    [
        ("thing1", "a" * 20, "a" * 20),
        ("thing1", "a" * 21, "a" * 19 + "…"),
        ("thing12", "line one\n  line two", "line one line two"),
        ("phrase2", "到货", "到货"),
        ("phrase2", "已经到货啦啦", "已经到货啦"),
        ("phrase2", "In stock", "到货"),
        ("phrase2", "「Mug」到货了", "到货了"),
        ("character_string3", "x" * 40, "x" * 32),
        ("time4", "2024年10月1日 15:01", "2024年10月1日 15:01"),
    ],
)
def test_fit_value(key: str, value: str, fitted: str) -> None:
    assert fit_value(key, value) == fitted


def test_page_with_token() -> None:
    assert page_with_token("pages/p", "https://h/r/abc_-9") == "pages/p?bis_token=abc_-9"
    assert page_with_token("pages/p?x=1", "https://h/r/abc/") == "pages/p?x=1&bis_token=abc"
    assert page_with_token("pages/p", None) == "pages/p"
    # The shopper's own page rides along for a web-view: no template field holds a link.
    assert (
        page_with_token("pages/p", "https://h/r/abc", "https://h/s/def")
        == "pages/p?bis_token=abc&bis_page=def"
    )


# --------------------------------------------------------------------------- classification
async def test_refused_users_are_permanent(fake: FakeWeChat, sender: WeChatSender) -> None:
    results = await sender.send_batch(batch(10))
    refused = [r for r in results if r.outcome is Outcome.PERMANENT]
    assert [r.error for r in refused] == ["wechat:43101", "wechat:43101"]
    assert {r.notification_id for r in refused} == {
        results[3].notification_id,
        results[7].notification_id,
    }
    assert outcomes(results)[Outcome.SENT] == 8 == len(fake.messages)


async def test_invalid_openid_and_config_errors_are_permanent(
    fake: FakeWeChat, sender: WeChatSender
) -> None:
    nobody = OutgoingMessage(uuid.uuid4(), "wechat", to="", to_masked="", text="x")
    [result] = await sender.send_batch([nobody])
    assert (result.outcome, result.error) == (Outcome.PERMANENT, "wechat:40003")
    fake.valid_template_ids = {"some-other-template"}
    with capture_logs() as logs:
        [result] = await sender.send_batch([message(1)])
    assert (result.outcome, result.error) == (Outcome.PERMANENT, "wechat:40037")
    # Not a per-contact outcome but our configuration: worth a warning, without the openid.
    [warning] = [e for e in logs if e["event"] == "wechat_send_rejected"]
    assert warning["code"] == "40037" and "o-user-1" not in repr(logs)


async def test_injected_transient_errors_are_transient_and_nothing_is_sent_twice() -> None:
    with FakeWeChat(transient_error_rate=0.3, transient_http_share=0.4, seed=3) as fake:
        tokens = AccessTokenCache(settings_for(fake))
        wechat = WeChatSender(settings_for(fake), tokens)
        results = await wechat.send_batch(batch(30))
        await wechat.close()
        await tokens.close()

    errors = Counter(r.error for r in results if r.outcome is Outcome.TRANSIENT)
    assert errors == {"wechat:-1": fake.error_counts[-1], "wechat:http_503": fake.error_counts[503]}
    assert fake.error_counts[-1] > 0 and fake.error_counts[503] > 0
    sent = [r for r in results if r.outcome is Outcome.SENT]
    assert len(sent) == len(fake.messages) == 30 - sum(errors.values())
    assert fake.send_attempts == 30  # one request per message: no blind resends
    assert_nothing_twice(fake)


async def test_rate_limited_is_transient() -> None:
    with FakeWeChat(rate_limit=1, rate_burst=5) as fake:
        tokens = AccessTokenCache(settings_for(fake))
        wechat = WeChatSender(settings_for(fake), tokens)
        results = await wechat.send_batch(batch(10))
        await wechat.close()
        await tokens.close()
    assert outcomes(results) == {Outcome.SENT: 5, Outcome.TRANSIENT: 5}
    assert {r.error for r in results if r.outcome is Outcome.TRANSIENT} == {"wechat:45011"}


async def test_unreachable_api_and_token_failures_are_transient(fake: FakeWeChat) -> None:
    tokens = AccessTokenCache(settings_for(fake))
    unreachable = WeChatSender(settings_for(fake, wechat_api_base=closed_port_url()), tokens)
    [result] = await unreachable.send_batch([message(1)])
    assert (result.outcome, result.error) == (Outcome.TRANSIENT, "wechat:network")

    bad_secret = settings_for(fake, wechat_app_secret="wrong")
    refused_tokens = AccessTokenCache(bad_secret)
    no_token = WeChatSender(bad_secret, refused_tokens)
    [result] = await no_token.send_batch([message(2)])
    assert (result.outcome, result.error) == (Outcome.TRANSIENT, "wechat:token_40125")
    assert fake.messages == []
    for wechat, cache in ((unreachable, tokens), (no_token, refused_tokens)):
        await wechat.close()
        await cache.close()


async def test_access_token_and_openid_stay_out_of_logs(
    fake: FakeWeChat,
    sender: WeChatSender,
    tokens: AccessTokenCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="httpx")
    with capture_logs() as events:
        await sender.send_batch([message(1), message(3)])  # one sent, one refused
    token = await tokens.get()
    lines = [r.getMessage() for r in caplog.records] + [repr(e) for e in events]
    assert any("access_token=***" in line for line in lines)
    assert not any(token in line or "o-user-" in line for line in lines)


# ----------------------------------------------------------------------------- token cache
async def test_expired_token_refreshed_once_by_20_concurrent_sends(
    fake: FakeWeChat, sender: WeChatSender
) -> None:
    await sender.send_batch([message(100)])  # warm the cache
    fake.expire_tokens()
    results = await sender.send_batch(batch(60))
    assert fake.stable_token_calls == 2
    assert fake.error_counts[42001] == 20  # all 20 in flight saw the expired token
    assert outcomes(results) == {Outcome.SENT: 58, Outcome.PERMANENT: 2}  # 2 refused users
    assert_nothing_twice(fake)


async def test_tokens_expiring_mid_run_are_refreshed_once() -> None:
    with FakeWeChat() as fake:
        tokens = AccessTokenCache(settings_for(fake))
        wechat = WeChatSender(settings_for(fake), tokens)
        running = asyncio.create_task(wechat.send_batch(batch(120)))
        await delivered_at_least(fake, 20)
        fake.expire_tokens()
        results = await running
        await wechat.close()
        await tokens.close()
    assert fake.error_counts[42001] > 0 and fake.stable_token_calls == 2
    assert outcomes(results) == {Outcome.SENT: 120}
    assert_nothing_twice(fake)


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_forced_refresh_only_when_our_refreshed_token_still_fails(
    fake: FakeWeChat, redis: Redis, shared: bool
) -> None:
    tokens = AccessTokenCache(settings_for(fake), redis if shared else None)
    first = await tokens.get()
    await tokens.invalidate(first)
    # A normal refresh: the fake still considers the token live and returns it again.
    assert await tokens.get() == first and fake.stable_token_calls == 2
    await tokens.invalidate(first)  # the token we just refreshed failed again: force
    forced = await tokens.get()
    assert forced != first and fake.stable_token_calls == 3
    await tokens.invalidate(first)  # a late report about the old token changes nothing
    assert await tokens.get() == forced and fake.stable_token_calls == 3
    await tokens.close()


async def test_two_caches_sharing_redis_fetch_once_and_refresh_once(
    fake: FakeWeChat, redis: Redis
) -> None:
    other_process = Redis.from_url(REDIS_URL)  # its own connection, as in another worker
    caches = [
        AccessTokenCache(settings_for(fake), redis),
        AccessTokenCache(settings_for(fake), other_process),
    ]
    got = await asyncio.gather(*(caches[i % 2].get() for i in range(20)))
    assert len(set(got)) == 1 and fake.stable_token_calls == 1
    assert await redis.exists(f"bis:wechat:{fake.appid}:token") == 1
    assert await redis.exists(f"bis:wechat:{fake.appid}:token-lock") == 0, "lock released"

    fake.expire_tokens()
    old = got[0]

    async def worker_saw_expiry(cache: AccessTokenCache) -> str:
        await cache.invalidate(old)
        return await cache.get()

    fresh = await asyncio.gather(*(worker_saw_expiry(caches[i % 2]) for i in range(20)))
    assert len(set(fresh)) == 1 and fresh[0] != old and fake.stable_token_calls == 2
    for cache in caches:
        await cache.close()
    await other_process.aclose()


async def test_a_token_is_remembered_until_it_is_rejected(fake: FakeWeChat, redis: Redis) -> None:
    """Each message used to read the token from Redis. A cache now keeps what it read for a
    moment (here: for the whole test, so that a slow host changes nothing), and a rejection
    drops it: the retry reads the token another worker has stored meanwhile."""
    other_process = Redis.from_url(REDIS_URL)
    ours = AccessTokenCache(settings_for(fake), redis, remember_seconds=3600)
    theirs = AccessTokenCache(settings_for(fake), other_process)
    first = await ours.get()
    await redis.delete(f"bis:wechat:{fake.appid}:token")
    assert await ours.get() == first and fake.stable_token_calls == 1, "no read, no fetch"

    assert await theirs.get() == first and fake.stable_token_calls == 2  # fetched: the same
    await theirs.invalidate(first)
    assert await theirs.get() == first
    await theirs.invalidate(first)  # rejected again: the other worker forces a new one
    forced = await theirs.get()
    assert forced != first and fake.stable_token_calls == 4

    await ours.invalidate(first)  # our next message is refused with the old token ...
    assert await ours.get() == forced, "... and the retry reads the new one"
    assert fake.stable_token_calls == 4, "from Redis, not fetched again"
    for cache in (ours, theirs):
        await cache.close()
    await other_process.aclose()


async def test_two_senders_sharing_redis_survive_expiry_with_one_refresh(
    fake: FakeWeChat, redis: Redis
) -> None:
    caches = [AccessTokenCache(settings_for(fake), redis) for _ in range(2)]
    senders = [WeChatSender(settings_for(fake), cache, concurrency=10) for cache in caches]
    first = await asyncio.gather(
        senders[0].send_batch(batch(20)), senders[1].send_batch(batch(20, 20))
    )
    fake.expire_tokens()
    second = await asyncio.gather(
        senders[0].send_batch(batch(20, 40)), senders[1].send_batch(batch(20, 60))
    )
    results = [r for group in (*first, *second) for r in group]
    assert fake.stable_token_calls == 2 and fake.error_counts[42001] > 1
    assert outcomes(results) == {Outcome.SENT: 78, Outcome.PERMANENT: 2}
    assert_nothing_twice(fake)
    for wechat, cache in zip(senders, caches, strict=True):
        await wechat.close()
        await cache.close()
