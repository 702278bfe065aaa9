"""Provider callbacks, authenticated by the provider's signature rather than an API key."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Query, Request, Response
from twilio.request_validator import RequestValidator

from backinstock.deps import RuntimeDep, SessionDep
from backinstock.errors import Forbidden, NotFound, error_responses
from backinstock.providers import service as providers
from backinstock.runtime import Runtime

router = APIRouter(tags=["providers"])
log = structlog.get_logger(__name__)
_N_DESCRIPTION = (
    "The notification the message was for, as the sender put it in the StatusCallback URL: "
    "a report about a message a crash left in doubt (its MessageSid never recorded) settles it."
)
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


async def _verified_form(request: Request, runtime: Runtime) -> dict[str, str]:
    """The callback's form fields, once X-Twilio-Signature proves Twilio sent them."""
    token = runtime.settings.twilio.twilio_auth_token
    if not token:
        raise NotFound("Twilio is not configured.")
    # Blank values are kept: Twilio signs every parameter it sends, an empty Body included.
    params = dict(
        parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    )
    # Twilio signs the URL it called: our public URL, not the one a proxy forwarded to us.
    url = runtime.settings.core.public_base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature", "")
    if not RequestValidator(token).validate(url, params, signature):
        raise Forbidden("The X-Twilio-Signature does not match.")
    return params


@router.post(
    "/v1/providers/twilio/status",
    operation_id="twilioStatusCallback",
    status_code=204,
    responses=error_responses(403, 404),
)
async def twilio_status(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    n: Annotated[uuid.UUID | None, Query(description=_N_DESCRIPTION)] = None,
) -> Response:
    """Delivery reports for SMS (Twilio's StatusCallback, form-encoded)."""
    form = await _verified_form(request, runtime)
    known = await providers.record_twilio_status(
        session, form.get("MessageSid", ""), form.get("MessageStatus", ""), form.get("ErrorCode"), n
    )
    if not known:
        log.info("twilio_status_unknown_message")
    return Response(status_code=204)


@router.post(
    "/v1/providers/twilio/inbound",
    operation_id="twilioInboundMessage",
    responses={200: {"content": {"application/xml": {}}}, **error_responses(403, 404)},
)
async def twilio_inbound(request: Request, session: SessionDep, runtime: RuntimeDep) -> Response:
    """Inbound SMS: STOP, UNSUBSCRIBE or 退订 unsubscribes every subscription of the number
    (pending requests too); a reply of a confirmation code (six digits) confirms the
    number's pending request it was sent for (double opt-in)."""
    form = await _verified_form(request, runtime)
    body, sender = form.get("Body", ""), form.get("From", "")
    if providers.is_stop(body):
        stopped = await providers.opt_out_phone(session, runtime.settings, runtime.keys, sender)
        log.info("sms_opt_out", subscriptions=stopped)
    elif (code := providers.reply_code(body)) is not None:
        confirmed = await providers.confirm_by_reply(
            session, runtime.settings, runtime.keys, sender, code, runtime.clock.now()
        )
        log.info("sms_confirmation", subscriptions=confirmed)
    return Response(_EMPTY_TWIML, media_type="application/xml")
