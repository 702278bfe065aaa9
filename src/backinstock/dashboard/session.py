"""The dashboard's sign-in: a stats key is exchanged for a signed, expiring session cookie.

The cookie names the API key (by id) and an expiry, signed with the token key. It holds no
secret, and it stops working when the key is revoked or loses the ``stats`` scope, because
every request checks the key row again.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.auth.models import ApiKey
from backinstock.auth.service import Principal, Scope
from backinstock.crypto import TokenSigner

COOKIE_NAME = "bis_session"
PURPOSE = "dashboard-session"


def issue(tokens: TokenSigner, principal: Principal, lifetime_seconds: int) -> str:
    expires = int(time.time()) + lifetime_seconds
    return tokens.sign_text(PURPOSE, f"{principal.key_id}:{expires}")


async def principal_from_cookie(
    session: AsyncSession, tokens: TokenSigner, cookie: str | None
) -> Principal | None:
    if not cookie or len(cookie) > 200:
        return None
    text = tokens.verify_text(PURPOSE, cookie)
    if text is None:
        return None
    key_id, _, expires = text.partition(":")
    if not (key_id.isdigit() and expires.isdigit()) or int(expires) < time.time():
        return None
    key = await session.scalar(
        select(ApiKey).where(ApiKey.id == int(key_id), ApiKey.revoked_at.is_(None))
    )
    if key is None or Scope.STATS.value not in key.scopes.split():
        return None
    return Principal(key.id, key.name, frozenset(key.scopes.split()))
