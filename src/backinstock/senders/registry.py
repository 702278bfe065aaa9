"""Which sender serves each channel: the configured provider, else the dev outbox."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys
from backinstock.senders.base import Sender
from backinstock.senders.outbox import DevOutboxSender


def build_senders(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], keys: Keys
) -> dict[str, Sender]:
    # Provider senders (Twilio, SMTP, WeChat) plug in here when their settings are present.
    return {
        channel.value: DevOutboxSender(channel.value, sessions, keys.cipher) for channel in Channel
    }
