"""The dashboard's sign-in: a stats key is exchanged for a server-side session, named by a
signed, expiring cookie.

The cookie carries the session's id, signed with the token key and the time of signing
(itsdangerous' ``TimestampSigner``); it holds no secret. It stops working when it is older
than the session lifetime, when its session is ended (signing out deletes
the row, so a copied cookie dies with it, in every API process), and when its key is
revoked or loses the ``stats`` scope, because every request reads the session with its key.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.auth.models import ApiKey
from backinstock.auth.service import Principal, Scope
from backinstock.crypto import TimedSigner
from backinstock.dashboard.models import DashboardSession
from backinstock.db import new_id, utcnow
from backinstock.identity import DASHBOARD_SESSION_TOKEN

COOKIE_NAME = "bis_session"


async def issue(
    session: AsyncSession, signer: TimedSigner, principal: Principal, lifetime_seconds: int
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
    return cookie_for(signer, row.id)


def cookie_for(signer: TimedSigner, session_id: uuid.UUID) -> str:
    return signer.sign(DASHBOARD_SESSION_TOKEN, session_id.hex)


def _session_id(signer: TimedSigner, cookie: str | None, max_age: int | None) -> uuid.UUID | None:
    if not cookie or len(cookie) > 200:
        return None
    session_hex = signer.verify(DASHBOARD_SESSION_TOKEN, cookie, max_age)
    if session_hex is None:
        return None
    try:
        return uuid.UUID(hex=session_hex)
    except ValueError:
        return None


async def principal_from_cookie(
    session: AsyncSession, signer: TimedSigner, cookie: str | None, lifetime_seconds: int
) -> Principal | None:
    session_id = _session_id(signer, cookie, lifetime_seconds)
    if session_id is None:
        return None
    key = await session.scalar(
        select(ApiKey)
        .join(DashboardSession, DashboardSession.api_key_id == ApiKey.id)
        .where(
            DashboardSession.id == session_id,
            DashboardSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    )
    if key is None or Scope.STATS.value not in key.scopes.split():
        return None
    return Principal(key.id, key.name, frozenset(key.scopes.split()))


async def end(session: AsyncSession, signer: TimedSigner, cookie: str | None) -> None:
    """Sign out: the session named by a genuine cookie (expired or not) is deleted."""
    session_id = _session_id(signer, cookie, max_age=None)
    if session_id is not None:
        await session.execute(delete(DashboardSession).where(DashboardSession.id == session_id))
