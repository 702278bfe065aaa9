"""The dashboard's FastAPI dependencies: its session cookie, and :data:`StatsReader`, which
lets the figure endpoints take either a ``stats`` key or that cookie (the dashboard's
charts read the same endpoints as API clients do)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie

from backinstock.auth.service import Principal, Scope
from backinstock.dashboard import session as dashboard_session
from backinstock.deps import BearerDep, RuntimeDep, SessionDep, bearer_principal, check_scope
from backinstock.errors import Unauthorized

_session_cookie = APIKeyCookie(
    name=dashboard_session.COOKIE_NAME,
    auto_error=False,
    description="The dashboard's signed session cookie (sign in at `/dashboard/login`).",
)
SessionCookieDep = Annotated[str | None, Depends(_session_cookie)]


async def stats_reader(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    credentials: BearerDep,
    cookie: SessionCookieDep,
) -> Principal:
    """A ``stats`` key, or the dashboard's session cookie (the dashboard's charts read the
    same figure endpoints as API clients do)."""
    if credentials is None and cookie:
        lifetime = runtime.settings.dashboard.dashboard_session_seconds
        principal = await dashboard_session.principal_from_cookie(
            session, runtime.keys.timed, cookie, lifetime
        )
        if principal is None:
            raise Unauthorized("The dashboard session has expired; sign in again.")
        return principal
    return check_scope(await bearer_principal(request, session, credentials), Scope.STATS)


# Figures: a stats key or a dashboard session.
StatsReader = Annotated[Principal, Depends(stats_reader)]
