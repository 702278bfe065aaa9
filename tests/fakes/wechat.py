"""Fake WeChat mini-program server APIs (stable_token + subscribe message send).

Point an ``httpx`` client at ``fake.base_url`` instead of
"https://api.weixin.qq.com"; paths and payloads are the real ones:

* ``POST /cgi-bin/stable_token`` JSON {grant_type, appid, secret, force_refresh?}
* ``POST /cgi-bin/message/subscribe/send?access_token=...`` JSON {touser,
  template_id, page?, data, miniprogram_state?, lang?}

Like WeChat, business errors come back as HTTP 200 with a non-zero
``errcode``; only the optional injected outages use a real HTTP 5xx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ._ratelimit import RateMeter
from .httpserver import BackgroundServer

DEFAULT_SECRET = "0123456789abcdef0123456789abcdef"
_STATES = {"developer", "trial", "formal"}
_LANGS = {"zh_CN", "en_US", "zh_HK", "zh_TW"}


@dataclass(frozen=True)
class WeChatMessage:
    """One delivered subscribe message; ``received_at`` is ``time.monotonic()``."""

    msgid: int
    touser: str
    template_id: str
    page: str | None
    data: dict[str, Any]
    miniprogram_state: str | None
    lang: str | None
    access_token: str
    received_at: float


class FakeWeChat(BackgroundServer):
    """WeChat API fake; mutate the injection attributes at any time."""

    def __init__(
        self,
        *,
        appid: str | None = None,
        secret: str = DEFAULT_SECRET,
        refused_users: Iterable[str] = (),
        valid_template_ids: Iterable[str] | None = None,
        transient_error_rate: float = 0.0,
        transient_http_share: float = 0.0,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        token_ttl: int = 7200,
        accept_delay: float = 0.0,
        seed: int = 0,
    ) -> None:
        # An app of its own by default: the token cache's Redis keys are named by the app,
        # so fakes in other processes sharing a Redis database never see each other's.
        self.appid = appid or f"wx{secrets.token_hex(8)}"
        self.secret, self.token_ttl = secret, token_ttl
        # Seconds between delivering a message and answering: a caller killed meanwhile
        # never learns it was delivered.
        self.accept_delay = accept_delay
        self.refused_users = set(refused_users)
        self.valid_template_ids = None if valid_template_ids is None else set(valid_template_ids)
        self.transient_error_rate = transient_error_rate
        self.transient_http_share = transient_http_share  # share answered HTTP 503
        self.rate = RateMeter(rate_limit, rate_burst)
        self.stable_token_calls = 0
        self.send_attempts = 0  # send requests with a valid token, whatever the outcome
        self.error_counts: Counter[int] = Counter()  # errcode (or HTTP status) -> count
        self._rng = random.Random(seed)  # seeded so failure patterns are reproducible
        self._lock = threading.Lock()  # the server thread writes, the test thread reads
        self._delivered = threading.Condition(self._lock)
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._current: str | None = None
        self._msgids = itertools.count(3_216_613_418_405_265_409)
        self._messages: list[WeChatMessage] = []
        super().__init__(
            Starlette(
                routes=[
                    Route("/cgi-bin/stable_token", self._stable_token, methods=["POST"]),
                    Route("/cgi-bin/message/subscribe/send", self._send, methods=["POST"]),
                ]
            )
        )

    @property
    def messages(self) -> list[WeChatMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for_messages(self, count: int, timeout: float) -> bool:
        """Block until ``count`` messages were delivered (woken by each delivery)."""
        with self._delivered:
            return self._delivered.wait_for(lambda: len(self._messages) >= count, timeout)

    @property
    def max_observed_rate(self) -> int:
        """Most send requests seen in any sliding 1-second window."""
        return self.rate.max_observed_rate

    def expire_tokens(self) -> None:
        """Make every issued token answer 42001 until a new one is fetched."""
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)

    async def _stable_token(self, request: Request) -> Response:
        with self._lock:
            self.stable_token_calls += 1
        body = await _json_object(request)
        if body is None:
            return self._fail(47001, "data format error")
        if body.get("grant_type") != "client_credential":
            return self._fail(40002, "invalid grant_type")
        if body.get("appid") != self.appid:
            return self._fail(40013, "invalid appid")
        if body.get("secret") != self.secret:
            return self._fail(40125, "invalid appsecret")
        token, expires_in = self._issue(force=body.get("force_refresh") is True)
        return JSONResponse({"access_token": token, "expires_in": expires_in})

    def _issue(self, *, force: bool) -> tuple[str, int]:
        """Stable-token semantics: reuse the live token unless forced or expired."""
        now = time.monotonic()
        with self._lock:
            current = self._current
            if current and not force and self._tokens.get(current, 0.0) > now:
                return current, int(self._tokens[current] - now)
            if current and force:
                del self._tokens[current]  # a forced refresh invalidates the old token
            self._current = secrets.token_urlsafe(96)
            self._tokens[self._current] = now + self.token_ttl
            return self._current, self.token_ttl

    async def _send(self, request: Request) -> Response:
        rejection = self._check_token(request.query_params.get("access_token"))
        if rejection is not None:
            return rejection
        body = await _json_object(request)
        rejection = self._admit() or self._validate(body)
        if rejection is not None:
            return rejection
        assert body is not None
        delivered = self._deliver(body, request.query_params["access_token"])
        if self.accept_delay:  # delivered, but the caller hears of it only later
            await asyncio.sleep(self.accept_delay)
        return delivered

    def _check_token(self, token: str | None) -> Response | None:
        if not token:
            return self._fail(41001, "access_token missing")
        expiry = self._tokens.get(token)
        if expiry is None:
            return self._fail(40001, "invalid credential, access_token is invalid or not latest")
        if expiry <= time.monotonic():
            return self._fail(42001, "access_token expired")
        return None

    def _admit(self) -> Response | None:
        """Rate limit first (it sees every attempt), then random transient failures."""
        with self._lock:
            self.send_attempts += 1
        if not self.rate.hit():
            return self._fail(45011, "api minute-quota reach limit  mustslower  retry next minute")
        if self._rng.random() >= self.transient_error_rate:
            return None
        if self._rng.random() < self.transient_http_share:
            with self._lock:
                self.error_counts[503] += 1
            return PlainTextResponse("503 Service Temporarily Unavailable", status_code=503)
        return self._fail(-1, "system error")

    def _validate(self, body: dict[str, Any] | None) -> Response | None:
        if body is None:
            return self._fail(47001, "data format error")
        if not body.get("touser"):
            return self._fail(40003, "invalid openid")
        template = body.get("template_id")
        if not template or (
            self.valid_template_ids is not None and template not in self.valid_template_ids
        ):
            return self._fail(40037, "invalid template id")
        bad = _bad_field(body)
        if bad:
            return self._fail(47003, f"argument invalid! {bad} invalid")
        if body["touser"] in self.refused_users:
            return self._fail(43101, "user refuse to accept the msg")
        return None

    def _deliver(self, body: dict[str, Any], token: str) -> Response:
        msg = WeChatMessage(
            msgid=next(self._msgids),
            touser=body["touser"],
            template_id=body["template_id"],
            page=body.get("page"),
            data=body["data"],
            lang=body.get("lang"),
            miniprogram_state=body.get("miniprogram_state"),
            access_token=token,
            received_at=time.monotonic(),
        )
        with self._lock:
            self._messages.append(msg)
            self._delivered.notify_all()
        return JSONResponse({"errcode": 0, "errmsg": "ok", "msgid": msg.msgid})

    def _fail(self, errcode: int, errmsg: str) -> Response:
        with self._lock:
            self.error_counts[errcode] += 1
        # Real errmsgs carry a request id suffix; clients must key on errcode.
        rid = "-".join(secrets.token_hex(4) for _ in range(3))
        return JSONResponse({"errcode": errcode, "errmsg": f"{errmsg} rid: {rid}"})


def _bad_field(body: dict[str, Any]) -> str | None:
    """Name the first malformed field, mimicking WeChat's 47003 messages."""
    data = body.get("data")
    if not isinstance(data, dict) or not data:
        return "data"
    for key, item in data.items():
        if not isinstance(item, dict) or not isinstance(item.get("value"), str):
            return f"data.{key}.value"
    if body.get("miniprogram_state", "formal") not in _STATES:
        return "miniprogram_state"
    if body.get("lang", "zh_CN") not in _LANGS:
        return "lang"
    return None


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
