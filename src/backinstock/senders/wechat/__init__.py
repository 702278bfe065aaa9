"""WeChat mini-program subscribe messages, in four parts: ``template`` (what a message
says), ``client`` (HTTP to the API), ``token`` (the shared access token) and ``sender``
(sending and classifying answers)."""

from backinstock.senders.wechat.sender import (
    EXPECTED_PERMANENT_ERRCODES,
    TOKEN_ERRCODES,
    TRANSIENT_ERRCODES,
    WeChatSender,
)
from backinstock.senders.wechat.template import (
    DEFAULT_FIELD_MAP,
    fit_value,
    page_with_token,
    template_data,
)
from backinstock.senders.wechat.token import AccessTokenCache, WeChatTokenError

__all__ = [
    "DEFAULT_FIELD_MAP",
    "EXPECTED_PERMANENT_ERRCODES",
    "TOKEN_ERRCODES",
    "TRANSIENT_ERRCODES",
    "AccessTokenCache",
    "WeChatSender",
    "WeChatTokenError",
    "fit_value",
    "page_with_token",
    "template_data",
]
