"""The ``stable_token`` access token, shared by every sender.

With Redis it is shared by every worker process (one refresh for all of them, serialised
by redis-py's ``Lock``); without Redis it lives in this process (an ``asyncio.Lock``). A
rejected token is dropped only if it is still the cached one, so N senders that all saw
40001/42001 cause one refresh, not N. The token is never logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import LockError, RedisError

from backinstock.config import WeChatSettings
from backinstock.senders.wechat.client import LazyClient, post_json

log = structlog.get_logger(__name__)

TOKEN_PATH = "/cgi-bin/stable_token"  # noqa: S105 (a URL path, not a secret)
# A token read from the store is used for this long without asking the store again: the
# Redis round trip per message was a fair share of a WeChat message's CPU. A token that
# another worker saw rejected meanwhile is used here at most this long (each rejection
# drops it, and the message is retried once with a fresh one).
REMEMBER_SECONDS = 1.0


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


def _invalidated(state: _State) -> _State:
    return replace(state, token="", force_next=state.replaced_failure)


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


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class _RedisStore:
    # Longer than a token request normally takes, short enough that a worker that died
    # holding the lock stalls the others briefly. Should it lapse mid-refresh, a second
    # normal refresh is harmless: stable_token hands out the same live token.
    LOCK_SECONDS = 15.0
    POLL_SECONDS = 0.02

    def __init__(self, redis: Redis, appid: str) -> None:
        self._redis = redis
        self._key = f"bis:wechat:{appid}:token"
        self._lock_key = f"bis:wechat:{appid}:token-lock"
        self._invalidate = redis.register_script(_INVALIDATE)
        self._write = redis.register_script(_WRITE)

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
        lock = self._redis.lock(
            self._lock_key,
            timeout=self.LOCK_SECONDS,
            sleep=self.POLL_SECONDS,
            blocking_timeout=2 * self.LOCK_SECONDS,
            # One Lock object per call, shared by no other task: its token needs no
            # thread-local home.
            thread_local=False,
            # A lock that lapsed during a slow refresh is no reason to drop the token.
            raise_on_release_error=False,
        )
        try:
            async with lock:
                # Whoever held the lock before us has usually stored a fresh token, which
                # `refresh` reads before fetching its own.
                return await refresh()
        except LockError as exc:  # not acquired within blocking_timeout
            raise WeChatTokenError("lock_timeout") from exc


class AccessTokenCache:
    """The ``stable_token`` access token, cached until ``refresh_margin`` seconds before it
    expires; shared through ``redis`` by every worker when given, else per process."""

    def __init__(
        self,
        settings: WeChatSettings,
        redis: Redis | None = None,
        *,
        refresh_margin: float = 300,
        remember_seconds: float = REMEMBER_SECONDS,
    ) -> None:
        self._settings = settings
        self._margin = refresh_margin
        self._store: _Store = (
            _RedisStore(redis, settings.wechat_app_id) if redis else _MemoryStore()
        )
        self._http = LazyClient(settings.wechat_api_base, connections=2)
        self._remember_seconds = remember_seconds
        self._remembered: tuple[str, float] | None = None  # (token, until: monotonic)

    async def get(self) -> str:
        remembered = self._remembered
        if remembered is not None and time.monotonic() < remembered[1]:
            return remembered[0]
        try:
            state = await self._store.read()
            if state is not None and state.token:
                token = state.token
            else:
                token = await self._store.single_flight(self._refresh_if_needed)
        except RedisError as exc:
            raise WeChatTokenError("redis") from exc
        self._remembered = (token, time.monotonic() + self._remember_seconds)
        return token

    async def invalidate(self, token: str) -> None:
        """``token`` was rejected: drop it unless it has already been replaced."""
        if self._remembered is not None and self._remembered[0] == token:
            self._remembered = None
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
        reply = await post_json(self._http.get(), TOKEN_PATH, body)
        if isinstance(reply, str):
            raise WeChatTokenError(reply)
        token, expires_in = reply.get("access_token"), reply.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            raise WeChatTokenError(str(reply.get("errcode", "bad_response")))
        return token, expires_in
