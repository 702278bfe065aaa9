"""HTTP to the WeChat API: pooled clients in small lanes, one JSON POST, and the access
token kept out of httpx's request log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import httpx

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_ACCESS_TOKEN_IN_URL = re.compile(r"(access_token=)[^&\s\"']+")


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


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CAs), made once per process: every client
    made its own, and loading the CA bundle cost about 30 ms of CPU each, paid by the first
    messages of a wave (a sender has a client per lane)."""
    return httpx.create_ssl_context()


class LazyClient:
    """One ``httpx.AsyncClient``, created on first use so that it belongs to the running
    event loop (the worker's), and reused for every request after that."""

    def __init__(self, base_url: str, connections: int) -> None:
        self._base_url = base_url.rstrip("/")
        self._limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections
        )
        self._client: httpx.AsyncClient | None = None
        tls_context()  # at start-up, not on a wave's first message

    def get(self) -> httpx.AsyncClient:
        if self._client is None:
            _install_redaction()
            self._client = httpx.AsyncClient(
                base_url=self._base_url,
                timeout=HTTP_TIMEOUT,
                limits=self._limits,
                verify=tls_context(),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class ClientLanes:
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
        self._lanes = [LazyClient(base_url, connections=size) for size in sizes]
        # One entry per connection; last in, first out, so a light load keeps to one lane.
        self._free: asyncio.LifoQueue[LazyClient] = asyncio.LifoQueue()
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


async def post_json(
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
