"""Sending WeChat mini-program subscribe messages (``subscribe/send``): one request per
message, a bounded number at a time, each retried once with a fresh access token when
WeChat says the token is stale. The openid (``message.to``) and the access token are never
logged or put in results."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from backinstock.config import WeChatSettings
from backinstock.senders.base import UNRECORDED, Journal, Outcome, OutgoingMessage, SendResult
from backinstock.senders.wechat.client import ClientLanes, post_json
from backinstock.senders.wechat.template import (
    DEFAULT_FIELD_MAP,
    check_field_map,
    is_zh,
    page_with_token,
    template_data,
)
from backinstock.senders.wechat.token import AccessTokenCache, WeChatTokenError

log = structlog.get_logger(__name__)

SEND_PATH = "/cgi-bin/message/subscribe/send"

# The token was expired (42001) or replaced/invalid (40001, 40014): the message was not
# sent, so it is safe to retry it once with a fresh token.
TOKEN_ERRCODES = frozenset({40001, 42001, 40014})
# WeChat's "system busy" and the per-minute API quota: worth trying again later.
TRANSIENT_ERRCODES = frozenset({-1, 45011}) | TOKEN_ERRCODES
# The user refused or used up their one-time consent (43101), or the openid is invalid
# (40003): expected per-contact outcomes, not worth a warning. Every other errcode is
# permanent too, but points at our configuration (template id, page, data) and is logged.
EXPECTED_PERMANENT_ERRCODES = frozenset({43101, 40003})


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
    marks_starts = True

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
        self._field_map = check_field_map(DEFAULT_FIELD_MAP if field_map is None else field_map)
        self._http = ClientLanes(settings.wechat_api_base, connections=concurrency)
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
            "page": page_with_token(
                self._settings.wechat_page, message.link, message.data.get("page_url")
            ),
            "miniprogram_state": self._settings.wechat_miniprogram_state,
            "lang": "zh_CN" if is_zh(message) else "en_US",
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
        reply = await post_json(client, self._url_with(token), payload)
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
