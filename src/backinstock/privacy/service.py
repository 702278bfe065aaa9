"""Erasure on request: every subscription of a contact goes, ciphertext and all."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import identity
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys
from backinstock.errors import InvalidField
from backinstock.subscriptions import service as subscriptions


def index_candidates(
    settings: Settings, keys: Keys, raw: str, channel: Channel | None
) -> list[bytes]:
    """Blind-index digests for every channel the value is a valid contact of."""
    channels = [channel] if channel else list(Channel)
    digests = identity.lookup(settings, keys, [(candidate, raw) for candidate in channels])
    if not digests:
        raise InvalidField("contact", "is not a valid phone number, email address or openid")
    return digests


async def erase_contact(
    session: AsyncSession, settings: Settings, keys: Keys, raw: str, channel: Channel | None
) -> int:
    candidates = index_candidates(settings, keys, raw, channel)
    return await subscriptions.delete_by_contact(session, candidates)
