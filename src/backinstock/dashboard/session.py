"""The dashboard's sign-in: a stats key is exchanged for a server-side session, named by a
signed, expiring cookie.

The cookie carries the session's id and expiry, signed with the token key; it holds no
secret. It stops working when it expires, when its session is ended (signing out deletes
the row, so a copied cookie dies with it, in every API process), and when its key is
revoked or loses the ``stats`` scope, because every request reads the session with its key.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.auth.models import ApiKey
from backinstock.auth.service import Principal, Scope
from backinstock.crypto import TokenSigner
from backinstock.dashboard.models import DashboardSession
from backinstock.db import new_id, utcnow
from backinstock.identity import DASHBOARD_SESSION_TOKEN

COOKIE_NAME = "bis_session"


async def issue(
    session: AsyncSession, tokens: TokenSigner, principal: Principal, lifetime_seconds: int
) -> str:
    """Start a session for the key and return its cookie value. Ended sessions are
    deleted; expired ones are swept here, so the table holds live sign-ins only."""
    now = utcnow()
    await session.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
    expires = now + timedelta(seconds=lifetime_seconds)
    row = DashboardSession(
        id=new_id(), api_key_id=principal.key_id, created_at=now, expires_at=expires
    )
    session.add(row)
    await session.flush()
    return cookie_for(tokens, row.id, int(expires.timestamp()))


def cookie_for(tokens: TokenSigner, session_id: uuid.UUID, expires: int) -> str:
    return tokens.sign_text(DASHBOARD_SESSION_TOKEN, f"{session_id.hex}:{expires}")


def _session_id(tokens: TokenSigner, cookie: str | None) -> tuple[uuid.UUID, int] | None:
    if not cookie or len(cookie) > 200:
        return None
    text = tokens.verify_text(DASHBOARD_SESSION_TOKEN, cookie)
    if text is None:
        return None
    session_hex, _, expires = text.partition(":")
    if not expires.isdigit():
        return None
    try:
        return uuid.UUID(hex=session_hex), int(expires)
    except ValueError:
        return None


async def principal_from_cookie(
    session: AsyncSession, tokens: TokenSigner, cookie: str | None
) -> Principal | None:
    parsed = _session_id(tokens, cookie)
    if parsed is None or parsed[1] < time.time():
        return None
    key = await session.scalar(
        select(ApiKey)
        .join(DashboardSession, DashboardSession.api_key_id == ApiKey.id)
        .where(
            DashboardSession.id == parsed[0],
            DashboardSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    )
    if key is None or Scope.STATS.value not in key.scopes.split():
        return None
    return Principal(key.id, key.name, frozenset(key.scopes.split()))


async def end(session: AsyncSession, tokens: TokenSigner, cookie: str | None) -> None:
    """Sign out: the session named by a genuine cookie (expired or not) is deleted."""
    parsed = _session_id(tokens, cookie)
    if parsed is not None:
        await session.execute(delete(DashboardSession).where(DashboardSession.id == parsed[0]))
