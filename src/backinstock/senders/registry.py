"""Which sender serves each channel: the configured provider, else the dev outbox.

A provider's module is imported only when the provider is configured: each brings its
client library (Twilio's SDK and aiohttp, aiosmtplib, httpx for WeChat), which a process
without that provider need not load at start-up. A booted process imports its configured
providers before it freezes its heap (:func:`load_configured`, ops/heap.py).
"""

from __future__ import annotations

import importlib

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys
from backinstock.senders.base import Sender
from backinstock.senders.outbox import DevOutboxSender

TWILIO_STATUS_PATH = "/v1/providers/twilio/status"


def load_configured(settings: Settings) -> None:
    """Import the configured providers' senders now. Senders are built on a worker's first
    message, after boot; a client library imported then (the Twilio SDK alone is tens of
    thousands of objects) would stay outside the frozen heap and be walked again by every
    full collection."""
    for configured, module in (
        (settings.twilio.configured, "backinstock.senders.twilio_sms"),
        (settings.smtp.configured, "backinstock.senders.smtp_email"),
        (settings.wechat.configured, "backinstock.senders.wechat"),
    ):
        if configured:
            importlib.import_module(module)


def build_senders(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    keys: Keys,
    redis: Redis | None = None,
) -> dict[str, Sender]:
    senders: dict[str, Sender] = {
        channel.value: DevOutboxSender(channel.value, sessions, keys.cipher) for channel in Channel
    }
    if settings.twilio.configured:
        from backinstock.senders.twilio_sms import TwilioSmsSender

        callback = settings.core.public_base_url.rstrip("/") + TWILIO_STATUS_PATH
        senders[Channel.SMS.value] = TwilioSmsSender(settings.twilio, callback)
    if settings.smtp.configured:
        from backinstock.senders.smtp_email import SmtpEmailSender

        senders[Channel.EMAIL.value] = SmtpEmailSender(
            settings.smtp, pool_size=settings.smtp.smtp_connections
        )
    if settings.wechat.configured:
        from backinstock.senders.wechat import AccessTokenCache, WeChatSender

        tokens = AccessTokenCache(settings.wechat, redis)
        field_map = settings.wechat.wechat_field_map or None
        senders[Channel.WECHAT.value] = WeChatSender(settings.wechat, tokens, field_map=field_map)
    return senders


async def close_senders(senders: dict[str, Sender]) -> None:
    for sender in senders.values():
        close = getattr(sender, "close", None)
        if close is not None:
            await close()
