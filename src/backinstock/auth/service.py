"""API keys: created with a scope set, shown once, stored as SHA-256, revocable.

Two kinds. A secret key (``bis_…``) carries scopes and stays on a server. A publishable key
(``pk_…``) is made to sit in a web page's source: it has no scope, only the origins (scheme,
host and port) of the pages that may use it, and all it can do is create pending
subscriptions from those origins (see ``deps.SubscriberKey``).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backinstock.auth.models import ApiKey

# Re-exported (callers find them here): defined apart for the command line's options.
from backinstock.auth.scopes import KeyKind as KeyKind
from backinstock.auth.scopes import Scope as Scope
from backinstock.db import utcnow
from backinstock.errors import Conflict, NotFound

_KEY_PREFIX = "bis_"
PUBLISHABLE_PREFIX = "pk_"
MAX_ORIGINS = 20
_LOOPBACK = frozenset({"127.0.0.1", "localhost"})
_DEFAULT_PORTS = {"https": 443, "http": 80}
_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scopes: frozenset[str]
    kind: KeyKind = KeyKind.SECRET
    origins: frozenset[str] = field(default_factory=frozenset)

    @property
    def publishable(self) -> bool:
        return self.kind is KeyKind.PUBLISHABLE


class InvalidOrigin(ValueError):
    """Not an origin a publishable key may name."""


def normalize_origin(raw: str) -> str:
    """A web origin as browsers send it in ``Origin``: ``scheme://host[:port]``, lower case,
    the default port left out, an international host in its ASCII (punycode) form. https,
    or http for 127.0.0.1 and localhost; nothing after the host but an optional "/"."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidOrigin(f"{raw!r} is not an origin such as https://shop.example") from None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if not host or parts.username is not None or parts.password is not None:
        raise InvalidOrigin(f"{raw!r} is not an origin such as https://shop.example")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidOrigin(f"{raw!r}: an origin has no path, query or fragment")
    if scheme != "https" and not (scheme == "http" and host in _LOOPBACK):
        raise InvalidOrigin(f"{raw!r}: use https (http only for 127.0.0.1 or localhost)")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidOrigin(f"{raw!r}: the host is not a valid name") from None
    if any(c not in _HOST_CHARACTERS for c in ascii_host) or ".." in ascii_host:
        raise InvalidOrigin(f"{raw!r}: the host is not a valid name")
    shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{ascii_host}{shown_port}"


def request_origin(value: str | None) -> str | None:
    """The request's ``Origin`` header, normalised; None when absent or not an origin
    (``null``, a malformed value, http from a public host)."""
    if value is None:
        return None
    try:
        return normalize_origin(value)
    except InvalidOrigin:
        return None


def normalize_origins(raw: Iterable[str]) -> list[str]:
    origins = list(dict.fromkeys(normalize_origin(value) for value in raw))
    if not origins:
        raise InvalidOrigin("a publishable key needs at least one --origin")
    if len(origins) > MAX_ORIGINS:
        raise InvalidOrigin(f"at most {MAX_ORIGINS} origins per key")
    return origins


def hash_key(secret: str) -> bytes:
    # The secret has 256 bits of entropy, so a fast hash cannot be brute-forced.
    return hashlib.sha256(secret.encode()).digest()


def _new_secret(kind: KeyKind = KeyKind.SECRET) -> str:
    prefix = PUBLISHABLE_PREFIX if kind is KeyKind.PUBLISHABLE else _KEY_PREFIX
    return prefix + secrets.token_urlsafe(32)


def _scope_text(scopes: list[Scope]) -> str:
    return " ".join(sorted({s.value for s in scopes}))


async def create_key(
    session: AsyncSession, name: str, scopes: list[Scope], origins: list[str] | None = None
) -> str:
    """A new key named ``name``: a secret key with ``scopes``, or, given ``origins``
    (normalised by :func:`normalize_origins`), a publishable key without scopes."""
    if await session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise Conflict(f"an API key named {name!r} already exists")
    kind = KeyKind.PUBLISHABLE if origins is not None else KeyKind.SECRET
    secret = _new_secret(kind)
    session.add(
        ApiKey(
            name=name,
            key_hash=hash_key(secret),
            prefix=secret[:10],
            scopes=_scope_text(scopes) if origins is None else "",
            kind=kind.value,
            origins=" ".join(origins) if origins is not None else None,
        )
    )
    await session.flush()
    return secret


async def replace_key(
    session: AsyncSession, name: str, scopes: list[Scope], origins: list[str] | None = None
) -> tuple[str, bool]:
    """A new secret under ``name`` with these scopes (or, given ``origins``, a publishable
    key for them), whether or not the name exists; the old secret (revoked or not) stops
    working. Returns the secret and whether one was replaced. The row is reused: names are
    unique, and a script re-running its setup expects the name to stay."""
    key = await session.scalar(select(ApiKey).where(ApiKey.name == name).with_for_update())
    if key is None:
        return await create_key(session, name, scopes, origins), False
    kind = KeyKind.PUBLISHABLE if origins is not None else KeyKind.SECRET
    secret = _new_secret(kind)
    key.key_hash = hash_key(secret)
    key.prefix = secret[:10]
    key.scopes = _scope_text(scopes) if origins is None else ""
    key.kind = kind.value
    key.origins = " ".join(origins) if origins is not None else None
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
    principal = Principal(
        key.id,
        key.name,
        frozenset(key.scopes.split()),
        KeyKind(key.kind),
        frozenset((key.origins or "").split()),
    )
    cache.put(key_hash, principal)
    return principal


async def authenticate_cached(
    sessions: async_sessionmaker[AsyncSession], secret: str, cache: KeyCache
) -> Principal | None:
    """:func:`authenticate`, opening a session (its own) only when the cache has no entry."""
    principal = cache.get(hash_key(secret))
    if principal is not None:
        return principal
    async with sessions() as session:
        return await authenticate(session, secret, cache)


async def publishable_origins(session: AsyncSession) -> frozenset[str]:
    """Every origin some publishable key that is not revoked names."""
    rows = await session.scalars(
        select(ApiKey.origins).where(
            ApiKey.kind == KeyKind.PUBLISHABLE.value, ApiKey.revoked_at.is_(None)
        )
    )
    return frozenset(origin for text in rows for origin in (text or "").split())


class OriginCache:
    """The publishable keys' origins, read at most every ``ttl`` seconds: a CORS preflight
    carries no key, so it is answered from every key's origins. A new or revoked key's
    origins are granted or refused within ``ttl`` seconds, like the key itself."""

    def __init__(self, ttl: float = 5.0) -> None:
        self._ttl = ttl
        self._origins: frozenset[str] = frozenset()
        self._until = 0.0

    async def get(self, sessions: async_sessionmaker[AsyncSession]) -> frozenset[str]:
        if time.monotonic() >= self._until:
            async with sessions() as session:
                self._origins = await publishable_origins(session)
            self._until = time.monotonic() + self._ttl
        return self._origins
