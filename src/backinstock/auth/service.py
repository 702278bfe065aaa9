"""API keys: created with a scope set, shown once, stored as SHA-256, revocable."""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.auth.models import ApiKey
from backinstock.db import utcnow
from backinstock.errors import Conflict, NotFound


class Scope(enum.StrEnum):
    SUBSCRIBE = "subscribe"
    INVENTORY = "inventory"
    STATS = "stats"
    ADMIN = "admin"


_KEY_PREFIX = "bis_"


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]


def hash_key(secret: str) -> bytes:
    # The secret has 256 bits of entropy, so a fast hash cannot be brute-forced.
    return hashlib.sha256(secret.encode()).digest()


def _new_secret() -> str:
    return _KEY_PREFIX + secrets.token_urlsafe(32)


def _scope_text(scopes: list[Scope]) -> str:
    return " ".join(sorted({s.value for s in scopes}))


async def create_key(session: AsyncSession, name: str, scopes: list[Scope]) -> str:
    if await session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"an API key named {name!r} already exists")
    secret = _new_secret()
    session.add(
        ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:10], scopes=_scope_text(scopes))
    )
    await session.flush()
    return secret


async def replace_key(session: AsyncSession, name: str, scopes: list[Scope]) -> tuple[str, bool]:
    """A new secret under ``name`` with these scopes, whether or not the name exists; the
    old secret (revoked or not) stops working. Returns the secret and whether one was replaced.
    The row is reused: names are unique, and a script re-running its setup expects the name
    to stay."""
    key = await session.scalar(select(ApiKey).where(ApiKey.name == name).with_for_update())
    if key is None:
        return await create_key(session, name, scopes), False
    secret = _new_secret()
    key.key_hash = hash_key(secret)
    key.prefix = secret[:10]
    key.scopes = _scope_text(scopes)
    key.created_at = utcnow()
    key.revoked_at = None
    await session.flush()
    return secret, True


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.id)))


async def revoke_key(session: AsyncSession, name: str) -> None:
    key = await session.scalar(select(ApiKey).where(ApiKey.name == name))
    if key is None:
        raise NotFound(f"no API key named {name!r}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()


class KeyCache:
    """Recently verified keys, so a hot endpoint does not read ``api_keys`` per request.
    Entries live a few seconds: a revoked key stops working within ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def get(self, key_hash: bytes) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: bytes, principal: Principal) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self._ttl, principal)


async def authenticate(session: AsyncSession, secret: str, cache: KeyCache) -> Principal | None:
    key_hash = hash_key(secret)
    principal = cache.get(key_hash)
    if principal is not None:
        return principal
    key = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    if key is None:
        return None
    principal = Principal(key.id, key.name, frozenset(key.scopes.split()))
    cache.put(key_hash, principal)
    return principal
