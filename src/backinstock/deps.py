"""FastAPI dependencies: the runtime, a committing session, and scope-checked API keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import db
from backinstock.auth.service import (
    KeyCache,
    Principal,
    Scope,
    authenticate,
    authenticate_cached,
    request_origin,
)
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


_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key: `Bearer bis_...` (secret, with scopes), or `Bearer pk_...` "
    "(publishable: only createSubscription, from the key's origins).",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


def _bearer_secret(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    return credentials.credentials.strip()


def _known(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("The API key is unknown or revoked.")
    return principal


async def bearer_principal(
    request: Request, session: AsyncSession, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    cache: KeyCache = request.app.state.key_cache
    return _known(await authenticate(session, _bearer_secret(credentials), cache))


def check_scope(principal: Principal, scope: Scope) -> Principal:
    if principal.publishable:
        raise Forbidden("A publishable key can only create subscriptions (POST /v1/subscriptions).")
    if scope.value not in principal.scopes:
        raise Forbidden(f"This API key lacks the '{scope.value}' scope.")
    return principal


def require_scope(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        request: Request, session: SessionDep, credentials: BearerDep
    ) -> Principal:
        return check_scope(await bearer_principal(request, session, credentials), scope)

    return dependency


def require_any_scope(*scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """A secret key with at least one of ``scopes``."""
    names = " or ".join(f"'{scope.value}'" for scope in scopes)

    async def dependency(
        request: Request, session: SessionDep, credentials: BearerDep
    ) -> Principal:
        principal = await bearer_principal(request, session, credentials)
        held = next((scope for scope in scopes if scope.value in principal.scopes), None)
        if held is None and not principal.publishable:
            raise Forbidden(f"This API key lacks the {names} scope.")
        return check_scope(principal, held or scopes[0])

    return dependency


async def subscriber(request: Request) -> Principal:
    """A secret key with the ``subscribe`` scope, or a publishable key used from one of its
    origins (the request's ``Origin``, which browsers set and scripts cannot change).

    The subscribe hot path's door: no dependencies of its own (each costs FastAPI's solving
    per request), and a session only when the key cache has no entry for the key (one of
    its own, read and closed before the request's transaction). The route documents the
    bearer scheme itself (``SUBSCRIBER_SECURITY``)."""
    runtime: Runtime = request.app.state.runtime
    cache: KeyCache = request.app.state.key_cache
    secret = _bearer_secret(await _bearer_scheme(request))
    principal = _known(await authenticate_cached(runtime.sessions, secret, cache))
    if not principal.publishable:
        return check_scope(principal, Scope.SUBSCRIBE)
    origin = request_origin(request.headers.get("origin"))
    if origin is None:
        raise Forbidden("A publishable key is used from a web page: the request has no Origin.")
    if origin not in principal.origins:
        raise Forbidden("This publishable key is not for this origin.")
    return principal


# What a route taking SubscriberKey declares in OpenAPI, as a BearerDep would have.
SUBSCRIBER_SECURITY: dict[str, Any] = {"security": [{_bearer_scheme.scheme_name: []}]}

# Creating subscriptions: a secret key with the subscribe scope, or a publishable key.
SubscriberKey = Annotated[Principal, Depends(subscriber)]
SubscribeKey = Annotated[Principal, Depends(require_scope(Scope.SUBSCRIBE))]
InventoryKey = Annotated[Principal, Depends(require_scope(Scope.INVENTORY))]
StatsKey = Annotated[Principal, Depends(require_scope(Scope.STATS))]
AdminKey = Annotated[Principal, Depends(require_scope(Scope.ADMIN))]
InventoryOrAdminKey = Annotated[Principal, Depends(require_any_scope(Scope.INVENTORY, Scope.ADMIN))]
