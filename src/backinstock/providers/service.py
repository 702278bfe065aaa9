"""What providers tell us afterwards: delivery reports, inbound opt-outs and confirmations."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import identity
from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.crypto import Keys
from backinstock.db import utcnow
from backinstock.dispatch import notifications, outcomes
from backinstock.dispatch.models import DeliveryReport
from backinstock.subscriptions import lifecycle
from backinstock.subscriptions import service as subscriptions

# Twilio's final statuses are a DeliveryReport's; "queued", "sending", "sent" are steps on
# the way.
_FINAL = {report.value: report for report in DeliveryReport}
# Keywords carriers and Twilio treat as opt-out, plus the Chinese 退订 ("unsubscribe") and TD.
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "退订", "TD"}


async def record_twilio_status(
    session: AsyncSession,
    message_sid: str,
    status: str,
    error_code: str | None,
    notification_id: uuid.UUID | None = None,
) -> bool:
    """Record a delivery report; False when the message is not ours. ``notification_id``
    (carried in the callback URL) settles a message a crash left in doubt: Twilio has it."""
    if notification_id is not None and message_sid:
        await outcomes.settle_by_callback(session, notification_id, message_sid)
    report = _FINAL.get(status.lower())
    if report is None:
        return True  # progress report: nothing to record
    error = f"twilio:{error_code}" if error_code else None
    return await notifications.record_delivery_report(session, message_sid, report, error, utcnow())


def is_stop(body: str) -> bool:
    return body.strip().upper() in STOP_WORDS


async def opt_out_phone(session: AsyncSession, settings: Settings, keys: Keys, raw: str) -> int:
    """Every subscription of the number stops waiting; the number stops being a fallback."""
    candidates = identity.lookup(settings, keys, [(Channel.SMS, raw)])
    if not candidates:  # not a phone number
        return 0
    stopped = await subscriptions.unsubscribe_by_contact(session, candidates)
    await lifecycle.fail_fallbacks_by_index(session, candidates)
    return stopped


_REPLY_CODE = re.compile(rf"[0-9]{{{identity.CONFIRM_CODE_DIGITS}}}")  # ASCII digits only


def reply_code(body: str) -> str | None:
    """The confirmation code an inbound SMS carries, if it is one (spaces ignored)."""
    compact = "".join(body.split())
    return compact if _REPLY_CODE.fullmatch(compact) else None


async def confirm_by_reply(
    session: AsyncSession, settings: Settings, keys: Keys, raw: str, code: str, now: datetime
) -> int:
    """The number replied a confirmation code: its pending SMS request with that code is
    confirmed (double opt-in). Only the number a request was for can confirm it by reply,
    since the code is checked against that number's own requests. Returns how many."""
    candidates = identity.lookup(settings, keys, [(Channel.SMS, raw)])
    if not candidates:
        return 0
    confirmed = 0
    for sub_id in await subscriptions.pending_for_contact(session, candidates, Channel.SMS):
        if identity.confirms(keys, sub_id, code):
            done = await subscriptions.confirm(session, settings, sub_id, now)
            confirmed += done.confirmed_now
    return confirmed
