from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse

from backinstock import db, tasks
from backinstock.auth.service import Principal
from backinstock.deps import (
    SUBSCRIBER_SECURITY,
    RuntimeDep,
    SessionDep,
    SubscribeKey,
    SubscriberKey,
)
from backinstock.errors import InvalidField, NotFound, error_response, error_responses
from backinstock.flows import optin
from backinstock.identity import CONFIRM_TOKEN, SHOPPER_PAGE_TOKEN, UNSUBSCRIBE_TOKEN
from backinstock.ops.metrics import SUBSCRIPTIONS_CREATED
from backinstock.runtime import Runtime
from backinstock.strict_json import StrictJsonRoute
from backinstock.subscriptions import pages
from backinstock.subscriptions import service as subscriptions
from backinstock.subscriptions.models import IN_QUEUE, Priority, Status
from backinstock.subscriptions.schemas import (
    ConfirmationOut,
    SubscribedOut,
    SubscriptionCreate,
    SubscriptionOut,
    SubstituteOut,
)
from backinstock.subscriptions.service import Terms

router = APIRouter(tags=["subscriptions"], route_class=StrictJsonRoute)


@router.post(
    "/v1/subscriptions",
    operation_id="createSubscription",
    status_code=status.HTTP_201_CREATED,
    response_model=SubscribedOut,
    responses={
        200: {"model": SubscribedOut, "description": "Already pending or waiting: the same one"},
        **error_responses(400, 401, 403, 413, 422, 429),
    },
    openapi_extra=SUBSCRIBER_SECURITY,
)
async def create_subscription(
    payload: SubscriptionCreate, request: Request, principal: SubscriberKey
) -> Response:
    """Subscribe a shopper to a SKU: 201 with the new subscription, 200 with the pending or
    waiting one for the same SKU and primary contact (a repeat). Rate limited per API key
    and client IP (RATE_LIMIT_PER_IP) and per contact (RATE_LIMIT_PER_CONTACT, new
    subscriptions only): every contact the subscription may message counts, fallbacks
    included. Over a limit: 429 with Retry-After.

    On a channel in DOUBLE_OPT_IN_CHANNELS the subscription starts ``pending``: its shopper
    is sent a confirmation (at most one per SKU a day) and it waits in the queue once they
    confirm, keeping the place its ``position`` shows if they do within
    CONFIRM_WINDOW_SECONDS. Repeating the request of a pending subscription confirms it.

    With a publishable key (`pk_…`, from a web page): the request's `Origin` must be one of
    the key's origins (else 403); the subscription always starts pending (WeChat: confirmed
    by the mini-program's consent); limits are PUBLISHABLE_RATE_LIMIT_PER_IP per client IP
    and PUBLISHABLE_RATE_LIMIT_PER_CONTACT; `fallbacks`, `customer_id` and a `vip` priority
    are refused (422), the consent IP recorded is the request's, product details only fill
    what is not known yet, and the answer leaves out `customer_id` and fallbacks. Browsers'
    CORS preflight (`OPTIONS`) is answered 204 for the origins of every publishable key that
    is not revoked (`Access-Control-Allow-Origin`, methods `POST`, headers `Authorization,
    Content-Type`, max age 600 s) and 403 for others; answers to those origins carry the
    grant, errors included, and expose `Retry-After`.

    While the SKU is sold out, `substitutes` names those of its substitutes
    (`PUT /v1/products/{sku}/substitutes`) in stock now, in the order listed, each named in
    the subscription's locale (else its language, else the default name)."""
    # The hot path: the runtime from the app and the transaction here, not as dependencies
    # (FastAPI's solving of each, per request, cost more than the INSERT); committed before
    # the answer is sent, as SessionDep's is. A new subscription's INSERT runs on the
    # transaction's connection; the ORM session joins it only when more is needed.
    runtime: Runtime = request.app.state.runtime
    client_ip = request.client.host if request.client else "unknown"
    settings = runtime.settings
    if principal.publishable:
        _refuse_what_a_page_cannot_vouch_for(payload)
        terms = Terms.publishable(settings, payload.channel, client_ip)
        client = f"pk-ip:{client_ip}"
    else:
        terms = Terms.secret(settings, payload.channel)
        client = f"ip:{principal.key_id}:{client_ip}"
    async with db.transaction_on_connection(runtime.engine) as session:
        requested = await optin.subscribe(
            session,
            settings,
            runtime.keys,
            runtime.limiter,
            runtime.products,
            payload,
            client=client,
            terms=terms,
            now=runtime.clock.now(),
        )
        if requested.confirmation is not None:
            ids = [str(requested.confirmation)]
            db.after_commit(session, lambda: tasks.enqueue(tasks.SEND, ids))
    out, created = _as_seen_by(principal, requested.out), requested.created
    if created:
        SUBSCRIPTIONS_CREATED.labels(channel=out.channel.value).inc()
    answer = SubscribedOut.model_construct(
        **dict(out),
        substitutes=[
            SubstituteOut.model_construct(sku=s.sku, name=s.name, url=s.url)
            for s in requested.substitutes
        ],
    )
    # Serialised by pydantic in one step: a dict for JSONResponse costs twice the CPU.
    return Response(
        answer.model_dump_json(),
        status_code=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        media_type="application/json",
    )


def _refuse_what_a_page_cannot_vouch_for(payload: SubscriptionCreate) -> None:
    """Fields only the storefront's server may set: a page is anybody's to script."""
    if payload.fallbacks:
        raise InvalidField("fallbacks", "is not accepted with a publishable key")
    if payload.customer_id is not None:
        raise InvalidField("customer_id", "is not accepted with a publishable key")
    if payload.priority is not Priority.STANDARD:
        raise InvalidField("priority", "only 'standard' is accepted with a publishable key")


def _as_seen_by(principal: Principal, out: SubscriptionOut) -> SubscriptionOut:
    """A publishable key's answer names no customer id and no fallback contact: a repeat
    may answer a subscription its storefront's server made."""
    if not principal.publishable:
        return out
    return out.model_copy(update={"customer_id": None, "fallbacks": []})


@router.get(
    "/v1/subscriptions/{subscription_id}",
    operation_id="getSubscription",
    response_model=SubscriptionOut,
    responses=error_responses(401, 403, 404),
)
async def get_subscription(
    subscription_id: str, session: SessionDep, runtime: RuntimeDep, _: SubscribeKey
) -> SubscriptionOut:
    sub_id = subscriptions.parse_id(subscription_id)
    out = await subscriptions.get(session, runtime.keys, sub_id) if sub_id else None
    if out is None:
        raise NotFound("No such subscription.")
    return out


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    operation_id="deleteSubscription",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404),
)
async def delete_subscription(
    subscription_id: str, session: SessionDep, _: SubscribeKey
) -> Response:
    """Stop the subscription waiting (204). It is not erased: GET still answers it, with
    status ``unsubscribed`` (or the one it had already stopped with), and the figures keep
    counting it; erasure is ``POST /v1/privacy/erase``. Repeating the DELETE answers 204."""
    sub_id = subscriptions.parse_id(subscription_id)
    if sub_id is None or not await subscriptions.unsubscribe(session, sub_id):
        raise NotFound("No such subscription.")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _unknown_link(request: Request) -> Response:
    if _wants_json(request):
        return error_response(404, "not_found", "This unsubscribe link is not valid.")
    return HTMLResponse(pages.invalid_link(), status_code=404)


@router.get(
    "/u/{token}",
    operation_id="showUnsubscribe",
    tags=["shoppers"],
    response_class=HTMLResponse,
    responses={
        404: {
            "description": "Unknown or forged token (HTML, or the error shape "
            "when only JSON is accepted)"
        }
    },
)
async def show_unsubscribe(token: str, request: Request, runtime: RuntimeDep) -> Response:
    """A page with one button. GET alone changes nothing, because mail scanners and link
    previews fetch links that nobody clicked; the button (or an RFC 8058 POST) unsubscribes."""
    if runtime.keys.tokens.verify(UNSUBSCRIBE_TOKEN, token) is None:
        return _unknown_link(request)
    return HTMLResponse(pages.confirm_unsubscribe(str(request.url.path)))


@router.post(
    "/u/{token}",
    operation_id="unsubscribeByToken",
    tags=["shoppers"],
    response_class=HTMLResponse,
    responses={
        404: {
            "description": "Unknown or forged token (HTML, or the error shape "
            "when only JSON is accepted)"
        }
    },
)
async def unsubscribe_by_token(
    token: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Response:
    """One-click unsubscribe. Mail clients POST ``List-Unsubscribe=One-Click`` (RFC 8058);
    any body, or none, is accepted: the signed token alone names the subscription."""
    sub_id = runtime.keys.tokens.verify(UNSUBSCRIBE_TOKEN, token)
    if sub_id is None or not await subscriptions.unsubscribe(session, sub_id):
        return _unknown_link(request)
    if _wants_json(request):
        return JSONResponse({"status": Status.UNSUBSCRIBED.value})
    return HTMLResponse(pages.unsubscribed())


@router.get(
    "/c/{token}",
    operation_id="showConfirmation",
    tags=["shoppers"],
    response_class=HTMLResponse,
    responses={
        404: {
            "description": "Unknown or forged token (HTML, or the error shape "
            "when only JSON is accepted)"
        }
    },
)
async def show_confirmation(token: str, request: Request, runtime: RuntimeDep) -> Response:
    """The link in a confirmation message: a page with one button. GET alone confirms
    nothing, because mail scanners and link previews fetch links nobody clicked; the
    button POSTs."""
    if runtime.keys.tokens.verify(CONFIRM_TOKEN, token) is None:
        return _not_a_link(request, "This confirmation link is not valid.")
    return HTMLResponse(pages.confirm_subscription(str(request.url.path)))


@router.post(
    "/c/{token}",
    operation_id="confirmSubscription",
    tags=["shoppers"],
    response_class=HTMLResponse,
    responses={
        200: {
            "description": "Confirmed (or confirmed before): the subscription waits, in its "
            'place. HTML, or when only JSON is accepted `{"id", "status", '
            '"position"}`'
        },
        404: {"description": "Unknown or forged token"},
        410: {
            "description": "Too late: the request was not confirmed within "
            "CONFIRM_WINDOW_SECONDS (and is erased), or it was withdrawn"
        },
    },
)
async def confirm_subscription(
    token: str, request: Request, session: SessionDep, runtime: RuntimeDep
) -> Response:
    """Double opt-in: the shopper confirms the request, which takes its place in the queue
    (the place it was given when made). Any body, or none, is accepted: the signed token
    alone names the subscription. Confirming again answers the same."""
    sub_id = runtime.keys.tokens.verify(CONFIRM_TOKEN, token)
    if sub_id is None:
        return _not_a_link(request, "This confirmation link is not valid.")
    done = await subscriptions.confirm(session, runtime.settings, sub_id, runtime.clock.now())
    if done.status is None or done.status not in IN_QUEUE:
        if _wants_json(request):
            return error_response(
                410, "gone", "This request has expired or was withdrawn; subscribe again."
            )
        return HTMLResponse(pages.confirmation_expired(), status_code=410)
    if _wants_json(request):
        body = ConfirmationOut(id=sub_id, status=done.status, position=done.position)
        return Response(body.model_dump_json(), media_type="application/json")
    shopper_page = f"/s/{runtime.keys.tokens.sign(SHOPPER_PAGE_TOKEN, sub_id)}"
    return HTMLResponse(pages.confirmed(done.position, shopper_page))


def _not_a_link(request: Request, message: str) -> Response:
    if _wants_json(request):
        return error_response(404, "not_found", message)
    return HTMLResponse(pages.invalid_link(), status_code=404)
