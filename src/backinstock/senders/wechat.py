"""WeChat mini-program subscribe messages (``subscribe/send``) with a shared access token.

Two parts:

* :class:`AccessTokenCache` holds the ``stable_token`` access token. With Redis it is shared
  by every worker process (one refresh for all of them); without Redis it lives in this
  process. A rejected token is dropped only if it is still the cached one, so N senders that
  all saw 40001/42001 cause one refresh, not N.
* :class:`WeChatSender` sends one request per message, a bounded number at a time.

Template data ("data") is built from ``field_map``: template key -> value source. Sources:
``product_name`` (``message.data["product_name"]``, else the message text), ``status``
(到货 / In stock, by locale), ``text`` (the rendered message) and ``data.<key>`` (any other
``message.data`` entry). Every value is then fitted to the WeChat limit for the key's type,
the key without its trailing digits (``thing3`` -> ``thing``), see :func:`fit_value`.

The openid (``message.to``) and the access token are never logged or put in results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backinstock.config import WeChatSettings
from backinstock.senders.base import UNRECORDED, Journal, Outcome, OutgoingMessage, SendResult

log = structlog.get_logger(__name__)

TOKEN_PATH = "/cgi-bin/stable_token"  # noqa: S105 (a URL path, not a secret)
SEND_PATH = "/cgi-bin/message/subscribe/send"
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

# The token was expired (42001) or replaced/invalid (40001, 40014): the message was not
# sent, so it is safe to retry it once with a fresh token.
TOKEN_ERRCODES = frozenset({40001, 42001, 40014})
# WeChat's "system busy" and the per-minute API quota: worth trying again later.
TRANSIENT_ERRCODES = frozenset({-1, 45011}) | TOKEN_ERRCODES
# The user refused or used up their one-time consent (43101), or the openid is invalid
# (40003): expected per-contact outcomes, not worth a warning. Every other errcode is
# permanent too, but points at our configuration (template id, page, data) and is logged.
EXPECTED_PERMANENT_ERRCODES = frozenset({43101, 40003})

DEFAULT_FIELD_MAP: dict[str, str] = {
    "thing1": "product_name",
    "phrase2": "status",
    "thing3": "text",
}
_SOURCES = frozenset({"product_name", "status", "text"})
_STATUS = {"zh": "到货", "en": "In stock"}
_FOLLOWUP_STATUS = {"zh": "优惠", "en": "Coupon"}

# WeChat's per-type limits in characters (docs: subscribeMessage.send, "参数值限制").
_LIMITS = {
    "thing": 20,
    "phrase": 5,
    "name": 10,
    "character_string": 32,
    "number": 32,
    "letter": 32,
    "symbol": 5,
    "phone_number": 17,
    "car_number": 8,
}
_NOT_HAN = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff]")
_ACCESS_TOKEN_IN_URL = re.compile(r"(access_token=)[^&\s\"']+")


# ------------------------------------------------------------------------------ template data
def fit_value(key: str, value: str) -> str:
    """Fit ``value`` to the WeChat rules for the type of template key ``key``.

    * whitespace runs (newlines included) become one space: every field is a single line;
    * ``thing`` (≤ 20 characters) is cut to 19 plus "…" so readers see it was shortened;
    * ``phrase`` accepts only Han characters (≤ 5): anything else is dropped, and if nothing
      is left the value becomes 到货 — WeChat rejects the whole message (47003) otherwise;
    * the other limited types are cut at their limit (an ellipsis would be an invalid
      character for number, letter, ...); time, date, amount and unknown types pass as is.

    Lengths count Unicode code points, as WeChat counts characters (a Han character is one).
    """
    kind = key.rstrip("0123456789")
    value = " ".join(value.split())
    if kind == "phrase":
        value = _NOT_HAN.sub("", value) or _STATUS["zh"]
    limit = _LIMITS.get(kind)
    if limit is None or len(value) <= limit:
        return value
    if kind == "thing":
        return value[: limit - 1] + "…"
    return value[:limit]


def _is_zh(message: OutgoingMessage) -> bool:
    # Subscriptions default to zh-CN (the render default) when no locale is recorded.
    return str(message.data.get("locale") or "zh-CN").lower().startswith("zh")


def _source_value(message: OutgoingMessage, source: str) -> str:
    if source == "product_name":
        return str(message.data.get("product_name") or message.text)
    if source == "status":
        statuses = _FOLLOWUP_STATUS if message.data.get("kind") == "followup" else _STATUS
        return statuses["zh" if _is_zh(message) else "en"]
    if source == "text":
        return message.text
    value = message.data.get(source.removeprefix("data."))
    return "" if value is None else str(value)


def template_data(message: OutgoingMessage, field_map: dict[str, str]) -> dict[str, Any]:
    return {
        key: {"value": fit_value(key, _source_value(message, source))}
        for key, source in field_map.items()
    }


def _check_field_map(field_map: dict[str, str]) -> dict[str, str]:
    # Fail at start-up, not with a 47003 on every message.
    if not field_map:
        raise ValueError("the WeChat field map is empty")
    for key, source in field_map.items():
        if source not in _SOURCES and not (source.startswith("data.") and len(source) > 5):
            raise ValueError(f"unknown WeChat field source {source!r} for {key!r}")
    return dict(field_map)


def page_with_token(page: str, link: str | None) -> str:
    """The mini-program page plus ``bis_token``: the last path segment of the /r/ link, so
    the page can record the click like the web redirect does."""
    token = urlsplit(link).path.rstrip("/").rpartition("/")[2] if link else ""
    if not token:
        return page
    separator = "&" if "?" in page else "?"
    return f"{page}{separator}bis_token={quote(token, safe='')}"


# ------------------------------------------------------------------------------------- HTTP
class _RedactAccessToken(logging.Filter):
    """httpx logs every request URL at INFO, and WeChat wants the token in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        return True


def _redact(arg: object) -> object:
    text = str(arg)
    return _ACCESS_TOKEN_IN_URL.sub(r"\1***", text) if "access_token=" in text else arg


def _install_redaction() -> None:
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactAccessToken) for f in httpx_log.filters):
        httpx_log.addFilter(_RedactAccessToken())


class _LazyClient:
    """One ``httpx.AsyncClient``, created on first use so that it belongs to the running
    event loop (the worker's), and reused for every request after that."""

    def __init__(self, base_url: str, connections: int) -> None:
        self._base_url = base_url.rstrip("/")
        self._limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections
        )
        self._client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            _install_redaction()
            self._client = httpx.AsyncClient(
                base_url=self._base_url, timeout=HTTP_TIMEOUT, limits=self._limits
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class _ClientLanes:
    """``connections`` keep-alive connections as several small clients ("lanes") of at most
    ``LANE_SIZE`` connections each, one request per connection at a time.

    httpcore's pool walks all its connections, and checks each idle one's socket, whenever
    a request starts or ends; with 20 connections that cost ~1.5 ms of CPU per request,
    more than the request itself, and it grows with the square of the pool. Small pools keep
    the cost per request flat however many requests are in flight."""

    LANE_SIZE = 4

    def __init__(self, base_url: str, connections: int) -> None:
        sizes = [self.LANE_SIZE] * (connections // self.LANE_SIZE)
        if connections % self.LANE_SIZE:
            sizes.append(connections % self.LANE_SIZE)
        self._lanes = [_LazyClient(base_url, connections=size) for size in sizes]
        # One entry per connection; last in, first out, so a light load keeps to one lane.
        self._free: asyncio.LifoQueue[_LazyClient] = asyncio.LifoQueue()
        for lane, size in zip(self._lanes, sizes, strict=True):
            for _ in range(size):
                self._free.put_nowait(lane)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        lane = await self._free.get()
        try:
            yield lane.get()
        finally:
            self._free.put_nowait(lane)

    async def aclose(self) -> None:
        await asyncio.gather(*(lane.aclose() for lane in self._lanes))


async def _post_json(
    client: httpx.AsyncClient, url: str | httpx.URL, body: dict[str, Any]
) -> dict[str, Any] | str:
    """The JSON object WeChat answered, or a short problem code when there is none."""
    try:
        response = await client.post(url, json=body)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError:
        return "network"
    if response.status_code != 200:
        # WeChat answers business errors with 200; anything else is a gateway or outage.
        return f"http_{response.status_code}"
    try:
        reply = response.json()
    except ValueError:
        return "bad_response"
    return reply if isinstance(reply, dict) else "bad_response"


# ------------------------------------------------------------------------------ token cache
class WeChatTokenError(Exception):
    """No access token could be had; ``code`` is the errcode or a problem like "timeout"."""

    def __init__(self, code: str) -> None:
        super().__init__(f"wechat access token unavailable: {code}")
        self.code = code


@dataclass(frozen=True)
class _State:
    token: str  # "" once invalidated: the entry then only remembers why
    replaced_failure: bool  # fetched because the token before it was rejected
    force_next: bool  # that replacement was rejected too: the next fetch must force


class _Store(Protocol):
    async def read(self) -> _State | None: ...
    async def write(self, state: _State, ttl: float) -> None: ...
    async def invalidate(self, token: str) -> None: ...
    async def single_flight(self, refresh: Callable[[], Awaitable[str]]) -> str: ...


class _MemoryStore:
    def __init__(self) -> None:
        self._state: _State | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def read(self) -> _State | None:
        return self._state if time.monotonic() < self._expires_at else None

    async def write(self, state: _State, ttl: float) -> None:
        self._state, self._expires_at = state, time.monotonic() + ttl

    async def invalidate(self, token: str) -> None:
        state = await self.read()
        if state is not None and state.token == token:
            self._state = _invalidated(state)

    async def single_flight(self, refresh: Callable[[], Awaitable[str]]) -> str:
        async with self._lock:
            return await refresh()


def _invalidated(state: _State) -> _State:
    return replace(state, token="", force_next=state.replaced_failure)


# Compare-and-invalidate in one step: between a GET and a write another worker may already
# have stored a fresh token, which must not be thrown away.
_INVALIDATE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
local replaced = redis.call('HGET', KEYS[1], 'replaced') or '0'
redis.call('HSET', KEYS[1], 'token', '', 'force', replaced)
return 1
"""
_WRITE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'replaced', ARGV[2], 'force', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class _RedisStore:
    # Longer than a token request normally takes, short enough that a worker that died
    # holding it stalls the others briefly. Should it lapse mid-refresh, a second normal
    # refresh is harmless: stable_token hands out the same live token.
    LOCK_MS = 15_000
    POLL_SECONDS = 0.02

    def __init__(self, redis: Redis, appid: str) -> None:
        self._redis = redis
        self._key = f"bis:wechat:{appid}:token"
        self._lock_key = f"bis:wechat:{appid}:token-lock"
        self._invalidate = redis.register_script(_INVALIDATE)
        self._write = redis.register_script(_WRITE)
        self._unlock = redis.register_script(_UNLOCK)

    async def read(self) -> _State | None:
        token, replaced, force = await self._redis.hmget(self._key, ["token", "replaced", "force"])
        if token is None:
            return None
        return _State(_text(token), _text(replaced) == "1", _text(force) == "1")

    async def write(self, state: _State, ttl: float) -> None:
        flags = ["1" if state.replaced_failure else "0", "1" if state.force_next else "0"]
        await self._write(keys=[self._key], args=[state.token, *flags, int(ttl * 1000)])

    async def invalidate(self, token: str) -> None:
        await self._invalidate(keys=[self._key], args=[token])

    async def single_flight(self, refresh: Callable[[], Awaitable[str]]) -> str:
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + 2 * self.LOCK_MS / 1000
        while not await self._redis.set(self._lock_key, owner, nx=True, px=self.LOCK_MS):
            # Another worker is refreshing: wait for its token rather than fetch our own.
            await asyncio.sleep(self.POLL_SECONDS)
            state = await self.read()
            if state is not None and state.token:
                return state.token
            if time.monotonic() > deadline:
                raise WeChatTokenError("lock_timeout")
        try:
            return await refresh()
        finally:
            await self._unlock(keys=[self._lock_key], args=[owner])


class AccessTokenCache:
    """The ``stable_token`` access token, cached until ``refresh_margin`` seconds before it
    expires; shared through ``redis`` by every worker when given, else per process."""

    def __init__(
        self, settings: WeChatSettings, redis: Redis | None = None, *, refresh_margin: float = 300
    ) -> None:
        self._settings = settings
        self._margin = refresh_margin
        self._store: _Store = (
            _RedisStore(redis, settings.wechat_app_id) if redis else _MemoryStore()
        )
        self._http = _LazyClient(settings.wechat_api_base, connections=2)

    async def get(self) -> str:
        try:
            state = await self._store.read()
            if state is not None and state.token:
                return state.token
            return await self._store.single_flight(self._refresh_if_needed)
        except RedisError as exc:
            raise WeChatTokenError("redis") from exc

    async def invalidate(self, token: str) -> None:
        """``token`` was rejected: drop it unless it has already been replaced."""
        try:
            await self._store.invalidate(token)
        except RedisError as exc:
            # The retry then reuses the stale token and fails: the message stays TRANSIENT.
            log.warning("wechat_token_invalidate_failed", error=type(exc).__name__)

    async def close(self) -> None:
        await self._http.aclose()

    async def _refresh_if_needed(self) -> str:
        state = await self._store.read()
        if state is not None and state.token:
            return state.token  # the previous lock holder refreshed it
        # A normal stable_token call returns the live token. Forcing invalidates it for
        # everyone and is rate limited, so force only when a token we fetched right after a
        # rejection was rejected as well.
        force = state is not None and state.force_next
        token, expires_in = await self._fetch(force)
        replaced = state is not None and not state.token
        await self._store.write(_State(token, replaced, False), self._lifetime(expires_in))
        log.info("wechat_token_refreshed", forced=force, expires_in=expires_in)
        return token

    def _lifetime(self, expires_in: int) -> float:
        # Near its end, stable_token keeps returning the same token with a short expires_in;
        # caching it for half of what is left avoids refetching on every message.
        return max(expires_in - self._margin, expires_in / 2, 1.0)

    async def _fetch(self, force: bool) -> tuple[str, int]:
        body: dict[str, Any] = {
            "grant_type": "client_credential",
            "appid": self._settings.wechat_app_id,
            "secret": self._settings.wechat_app_secret,
        }
        if force:
            body["force_refresh"] = True
        reply = await _post_json(self._http.get(), TOKEN_PATH, body)
        if isinstance(reply, str):
            raise WeChatTokenError(reply)
        token, expires_in = reply.get("access_token"), reply.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WeChatTokenError(str(reply.get("errcode", "bad_response")))
        return token, expires_in


# ------------------------------------------------------------------------------------ sender
@dataclass(frozen=True)
class _Answer:
    errcode: int | None  # None: no WeChat answer at all (see ``problem``)
    problem: str = ""
    msgid: str | None = None

    @property
    def code(self) -> str:
        return self.problem if self.errcode is None else str(self.errcode)


def _answer(reply: dict[str, Any] | str) -> _Answer:
    if isinstance(reply, str):
        return _Answer(None, reply)
    errcode = reply.get("errcode")
    if not isinstance(errcode, int):
        # subscribe/send always carries an errcode, 0 included: this is not WeChat speaking.
        return _Answer(None, "bad_response")
    msgid = reply.get("msgid")
    return _Answer(errcode, msgid=None if msgid is None else str(msgid))


def _classify(answer: _Answer) -> Outcome:
    if answer.errcode == 0:
        return Outcome.SENT
    if answer.errcode is None or answer.errcode in TRANSIENT_ERRCODES:
        return Outcome.TRANSIENT  # timeouts, network, HTTP 5xx, token trouble, -1, 45011
    return Outcome.PERMANENT


class WeChatSender:
    """WeChat has no idempotency key and no lookup: a request a crash left in flight may
    have delivered the message, and what happens to it is ``IN_DOUBT_WECHAT``'s choice."""

    channel = "wechat"

    def __init__(
        self,
        settings: WeChatSettings,
        tokens: AccessTokenCache,
        concurrency: int = 20,
        field_map: dict[str, str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._settings = settings
        self._tokens = tokens
        self._field_map = _check_field_map(DEFAULT_FIELD_MAP if field_map is None else field_map)
        self._http = _ClientLanes(settings.wechat_api_base, connections=concurrency)
        self._send_url = httpx.URL(settings.wechat_api_base.rstrip("/") + SEND_PATH)
        self._url_for_token: tuple[str, httpx.URL] = ("", self._send_url)

    async def send_batch(
        self, messages: list[OutgoingMessage], journal: Journal = UNRECORDED
    ) -> list[SendResult]:
        sends = (self._send_in_lane(m, journal) for m in messages)
        return [r for r in await asyncio.gather(*sends) if r is not None]

    async def close(self) -> None:
        await self._http.aclose()

    def payload(self, message: OutgoingMessage) -> dict[str, Any]:
        return {
            "touser": message.to,
            "template_id": self._settings.wechat_template_id,
            "page": page_with_token(self._settings.wechat_page, message.link),
            "miniprogram_state": self._settings.wechat_miniprogram_state,
            "lang": "zh_CN" if _is_zh(message) else "en_US",
            "data": template_data(message, self._field_map),
        }

    async def _send_in_lane(self, message: OutgoingMessage, journal: Journal) -> SendResult | None:
        async with self._http.client() as client:  # in flight: at most `concurrency` at a time
            return await journal.call(message, lambda: self._send_guarded(client, message))

    async def _send_guarded(
        self, client: httpx.AsyncClient, message: OutgoingMessage
    ) -> SendResult:
        # One bad message must not lose the results of the others in the batch.
        try:
            answer = await self._send(client, self.payload(message))
        except Exception as exc:
            log.error(
                "wechat_send_crashed",
                notification_id=str(message.notification_id),
                error=type(exc).__name__,  # not the message: it could carry the openid
            )
            return SendResult(message.notification_id, Outcome.TRANSIENT, error="wechat:internal")
        return self._result(message, answer)

    async def _send(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> _Answer:
        answer = await self._attempt(client, payload)
        if answer.errcode in TOKEN_ERRCODES:
            answer = await self._attempt(client, payload)  # once, with the refreshed token
        return answer

    async def _attempt(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> _Answer:
        try:
            token = await self._tokens.get()
        except WeChatTokenError as exc:
            return _Answer(None, f"token_{exc.code}")
        reply = await _post_json(client, self._url_with(token), payload)
        answer = _answer(reply)
        if answer.errcode in TOKEN_ERRCODES:
            await self._tokens.invalidate(token)
        return answer

    def _url_with(self, token: str) -> httpx.URL:
        # Parsing the URL and its query is a fair share of httpx's work per request; the
        # token changes every couple of hours, so the parsed URL is kept until it does.
        if self._url_for_token[0] != token:
            url = self._send_url.copy_merge_params({"access_token": token})
            self._url_for_token = (token, url)
        return self._url_for_token[1]

    def _result(self, message: OutgoingMessage, answer: _Answer) -> SendResult:
        outcome = _classify(answer)
        if outcome is Outcome.SENT:
            return SendResult(message.notification_id, outcome, provider_id=answer.msgid)
        if outcome is Outcome.PERMANENT and answer.errcode not in EXPECTED_PERMANENT_ERRCODES:
            log.warning(
                "wechat_send_rejected",
                notification_id=str(message.notification_id),
                code=answer.code,
            )
        return SendResult(message.notification_id, outcome, error=f"wechat:{answer.code}")
