"""FastAPI dependencies: the runtime, a committing session, and scope-checked API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import db
from backinstock.auth.service import KeyCache, Principal, Scope, authenticate
from backinstock.dashboard import session as dashboard_session
from backinstock.errors import Forbidden, Unauthorized
from backinstock.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with db.transaction(runtime.sessions) as session:
        yield session


# scope="function": commit before the response is sent, so a 201 means the row is durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


_bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer bis_...`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


_session_cookie = APIKeyCookie(
    name=dashboard_session.COOKIE_NAME,
    auto_error=False,
    description="The dashboard's signed session cookie (sign in at `/dashboard/login`).",
)
SessionCookieDep = Annotated[str | None, Depends(_session_cookie)]


async def _bearer_principal(
    request: Request, session: AsyncSession, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    cache: KeyCache = request.app.state.key_cache
    principal = await authenticate(session, credentials.credentials.strip(), cache)
    if principal is None:
        raise Unauthorized("The API key is unknown or revoked.")
    return principal


def _check_scope(principal: Principal, scope: Scope) -> Principal:
    if scope.value not in principal.scopes:
        raise Forbidden(f"This API key lacks the '{scope.value}' scope.")
    return principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        request: Request, session: SessionDep, credentials: BearerDep
    ) -> Principal:
        return _check_scope(await _bearer_principal(request, session, credentials), scope)

    return dependency


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
    return _check_scope(await _bearer_principal(request, session, credentials), Scope.STATS)


SubscribeKey = Annotated[Principal, Depends(require_scope(Scope.SUBSCRIBE))]
InventoryKey = Annotated[Principal, Depends(require_scope(Scope.INVENTORY))]
StatsKey = Annotated[Principal, Depends(require_scope(Scope.STATS))]
# Figures: a stats key or a dashboard session.
StatsReader = Annotated[Principal, Depends(stats_reader)]
AdminKey = Annotated[Principal, Depends(require_scope(Scope.ADMIN))]
