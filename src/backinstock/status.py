"""``backinstock status``: the delivery pipeline on one screen, read from the database.

Open waves with a progress bar per SKU (told of to tell; held for quiet hours, pending,
failed), pending work by channel, the oldest due message and the providers configured
(never a secret). The figures are the ones the API's /metrics serves
(:mod:`backinstock.stats.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock.config import Settings
from backinstock.contacts import Channel
from backinstock.stats import pipeline


@dataclass(frozen=True)
class Report:
    now: datetime
    waves: list[pipeline.OpenWave]
    figures: pipeline.Figures
    providers: list[tuple[str, str, str]]  # channel, provider, rate


async def gather(session: AsyncSession, settings: Settings, now: datetime) -> Report:
    return Report(
        now=now,
        waves=await pipeline.open_waves(session, now),
        figures=await pipeline.read_figures(session, settings, now),
        providers=providers(settings),
    )


def providers(settings: Settings) -> list[tuple[str, str, str]]:
    """Which provider each channel uses, where, and at what rate: no credentials."""

    def rate(per_second: float) -> str:
        return f"{per_second:g}/s" if per_second > 0 else "no limit"

    sms = ("dev outbox", "")
    if settings.twilio.configured:
        sender = settings.twilio.twilio_from or "messaging service"
        sms = (f"Twilio, from {sender}", rate(settings.twilio.twilio_rate_per_second))
    email = ("dev outbox", "")
    if settings.smtp.configured:
        relay = f"{settings.smtp.smtp_host}:{settings.smtp.smtp_port}"
        email = (f"SMTP {relay}", rate(settings.smtp.smtp_rate_per_second))
    wechat = ("dev outbox", "")
    if settings.wechat.configured:
        wechat = ("WeChat subscribe messages", rate(settings.wechat.wechat_rate_per_second))
    return [
        (Channel.SMS.value, *sms),
        (Channel.EMAIL.value, *email),
        (Channel.WECHAT.value, *wechat),
    ]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def render(report: Report) -> RenderableType:
    f = report.figures
    waves = Table(title="Open waves", title_justify="left", expand=False)
    for column in ("SKU", "opened", "step", "level", "told / to tell", ""):
        waves.add_column(column)
    for column in ("held", "pending", "sending", "failed"):
        waves.add_column(column, justify="right")
    for w in report.waves:
        to_tell = max(w.target, w.told + w.pending + w.sending + w.failed)
        waves.add_row(
            w.sku,
            f"{_duration((report.now - w.opened_at).total_seconds())} ago",
            str(w.step),
            str(w.level),
            f"{w.told} / {to_tell}",
            ProgressBar(total=max(to_tell, 1), completed=w.told, width=30),
            str(w.held),
            str(w.pending - w.held),
            str(w.sending),
            str(w.failed),
        )
    if not report.waves:
        waves.add_row("(none)", "", "", "", "", "", "", "", "", "")

    work = Table(title="Pending work by channel", title_justify="left")
    for column in ("channel", "pending", "sending", "failed (all time)"):
        work.add_column(column, justify="left" if column == "channel" else "right")
    for channel in pipeline.CHANNELS:
        counts = [f.notifications.get((s, channel), 0) for s in pipeline.SHOWN_STATUSES]
        if channel == pipeline.UNKNOWN_CHANNEL and not any(counts):
            continue
        work.add_row(channel, *(str(n) for n in counts))

    oldest = (
        f"oldest due message: waiting {_duration(f.oldest_due_age)} for a worker ({f.due} due)"
        if f.due
        else "oldest due message: none due"
    )
    last = (
        "last message sent: never"
        if f.last_sent_age is None
        else f"last message sent: {_duration(f.last_sent_age)} ago"
    )
    senders = Table(title="Providers", title_justify="left")
    for column in ("channel", "provider", "rate"):
        senders.add_column(column)
    for row in report.providers:
        senders.add_row(*row)
    stamp = Text(f"backinstock status at {report.now.isoformat(timespec='seconds')}", "bold")
    return Group(stamp, waves, work, Text(oldest), Text(last), senders)
