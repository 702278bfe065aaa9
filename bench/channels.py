"""Messages per second per channel through the real senders into the local fake providers.

One process (this one) drives TwilioSmsSender, SmtpEmailSender and WeChatSender (with its
AccessTokenCache) the way the worker does: ``send_batch`` on batches of OutgoingMessage,
one batch after the other, on a plain asyncio loop (as dramatiq's AsyncIO middleware). The
fakes from tests/fakes/ (FakeTwilio, FakeSMTP, FakeWeChat) run in a SEPARATE process
(``--serve-fakes``, started by this script), so the measured process is only the sender;
both processes still share this host's cores. After every round the fake process is asked
how many messages it accepted: every message must have arrived exactly once.

SMTP is also measured without the sender's connection pool: ``aiosmtplib.send`` per message
(a new connection each: connect, EHLO, MAIL, RCPT, DATA, QUIT), as many at a time as the
pool has connections, the same MIME bytes (``render_email``).

    .venv/bin/python bench/channels.py --messages 2000 --batch 200 --rounds 3 --write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchlib import RESULTS, ROOT, cpu_seconds, source_state, write_results

REDIS_URL = "redis://127.0.0.1:6379/11"  # the WeChat token cache (one key, deleted at the end)
FROM = "Shop <shop@shop.example>"
SMS_FROM = "+15005550006"
TEMPLATE = "tmpl-back-in-stock"
TARGET = 1000.0  # messages per second per channel


# ---------------------------------------------------------------- the fakes' process


def serve_fakes() -> None:
    """Start the fakes, print their addresses as one JSON line, then answer commands on
    stdin ("counts": accepted messages, errors, connections and token calls per fake
    since the last "counts")."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.smtp import FakeSMTP
    from tests.fakes.twilio import FakeTwilio
    from tests.fakes.wechat import FakeWeChat

    twilio, wechat = FakeTwilio().start(), FakeWeChat(valid_template_ids=[TEMPLATE]).start()
    smtp, smtp_tls = FakeSMTP().start(), FakeSMTP(starttls=True, require_starttls=True).start()
    fakes: dict[str, Any] = {"twilio": twilio, "wechat": wechat, "smtp": smtp, "smtp_tls": smtp_tls}
    print(json.dumps({
        "pid": os.getpid(),
        "twilio": {"base_url": twilio.base_url, "sid": twilio.account_sid,
                   "token": twilio.auth_token},
        "wechat": {"base_url": wechat.base_url, "appid": wechat.appid, "secret": wechat.secret},
        "smtp": {"port": smtp.port},
        "smtp_tls": {"port": smtp_tls.port, "cert_pem": (smtp_tls.cert_pem or b"").decode()},
    }), flush=True)  # fmt: skip
    for line in sys.stdin:
        if line.strip() != "counts":
            continue
        counts = {}
        for name, fake in fakes.items():
            with fake._lock:  # the server thread appends and counts under this lock
                messages, fake._messages = fake._messages, []
                counts[name] = {
                    "messages": len(messages),
                    "distinct": len({_recipient(name, m) for m in messages}),
                    "errors": sum(fake.error_counts.values()),
                    "connections": getattr(fake, "connection_count", None),
                    "token_calls": getattr(fake, "stable_token_calls", None),
                }
                fake.error_counts.clear()  # every figure is since the last "counts"
                for counter in ("connection_count", "stable_token_calls"):
                    if hasattr(fake, counter):
                        setattr(fake, counter, 0)
        print(json.dumps(counts), flush=True)
    for fake in fakes.values():
        fake.stop()


def _recipient(name: str, message: Any) -> str:
    if name == "twilio":
        return str(message.to)
    if name == "wechat":
        return str(message.touser)
    return ",".join(message.rcpt_tos)


class Fakes:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-fakes"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("the fakes' process did not start")
        self.info: dict[str, Any] = json.loads(line)

    def counts(self) -> dict[str, dict[str, Any]]:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("counts\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str  # the row's label
    fake: str  # which fake receives it (key in Fakes.counts)
    send: Callable[[list[Any]], Awaitable[list[Any]]]
    messages: Callable[[int, int], list[Any]]  # (round, count) -> fresh messages
    note: str
    close: Callable[[], Awaitable[None]] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)


def build_cases(info: dict[str, Any], args: argparse.Namespace, redis: Any) -> list[Case]:
    import aiosmtplib

    from backinstock.config import SmtpSettings, TwilioSettings, WeChatSettings
    from backinstock.dispatch.render import MessageContext, render
    from backinstock.senders.base import OutgoingMessage
    from backinstock.senders.mime import render_email
    from backinstock.senders.smtp_email import SmtpEmailSender
    from backinstock.senders.twilio_sms import TwilioSmsSender
    from backinstock.senders.wechat import AccessTokenCache, WeChatSender

    context = MessageContext(
        name="张女士", product_name="红色T恤 M", link="https://shop.example/r/" + "t" * 80,
        unsubscribe_url="https://shop.example/u/" + "u" * 80, level=3, queue_size=10,
    )  # fmt: skip
    texts = {ch: render(ch, "zh-CN", context) for ch in ("sms", "email", "wechat")}

    def msgs(channel: str, to: Callable[[int], str]) -> Callable[[int, int], list[Any]]:
        r = texts[channel]

        def make(rnd: int, count: int) -> list[Any]:
            return [
                OutgoingMessage(
                    notification_id=uuid.uuid4(),
                    channel=channel,
                    to=to(rnd * 1_000_000 + i),
                    to_masked="***",
                    text=r.text,
                    subject=r.subject,
                    html=r.html,
                    link=context.link,
                    unsubscribe_url=context.unsubscribe_url,
                    data={
                        "product_url": "https://shop.example/p/123",
                        "product_name": context.product_name,
                        "locale": "zh-CN",
                    },
                )
                for i in range(count)
            ]

        return make

    tw = info["twilio"]
    twilio = TwilioSmsSender(
        TwilioSettings(
            twilio_account_sid=tw["sid"],
            twilio_auth_token=tw["token"],
            twilio_from=SMS_FROM,
            twilio_api_base=tw["base_url"],
        ),
        "https://shop.example/v1/providers/twilio/status",  # as the registry passes it
    )

    def smtp_settings(port: int, starttls: bool) -> SmtpSettings:
        return SmtpSettings(
            smtp_host="127.0.0.1", smtp_port=port, smtp_username="", smtp_password="",
            smtp_starttls=starttls, smtp_from=FROM,
        )  # fmt: skip

    tls_context = ssl.create_default_context(cadata=info["smtp_tls"]["cert_pem"])
    smtp_plain = SmtpEmailSender(smtp_settings(info["smtp"]["port"], False))
    smtp_tls = SmtpEmailSender(
        smtp_settings(info["smtp_tls"]["port"], True), tls_context=tls_context
    )

    def per_message(port: int, starttls: bool) -> Callable[[list[Any]], Awaitable[list[Any]]]:
        """The baseline: aiosmtplib.send per message, a new connection each, at most
        pool_size (4) at a time, the same MIME message as the sender builds."""
        envelope_from = parseaddr(FROM)[1]

        async def send(batch: list[Any]) -> list[Any]:
            limit = asyncio.Semaphore(4)

            async def one(m: Any) -> bool:
                email, _ = render_email(m, FROM, "shop.example")
                async with limit:
                    await aiosmtplib.send(
                        email, sender=envelope_from, recipients=[m.to], hostname="127.0.0.1",
                        port=port, start_tls=starttls, use_tls=False,
                        tls_context=tls_context if starttls else None, timeout=10,
                    )  # fmt: skip
                return True

            return list(await asyncio.gather(*(one(m) for m in batch)))

        return send

    wc = info["wechat"]
    wechat_settings = WeChatSettings(
        wechat_app_id=wc["appid"], wechat_app_secret=wc["secret"], wechat_template_id=TEMPLATE,
        wechat_api_base=wc["base_url"],
    )  # fmt: skip
    wechat_tokens_redis = AccessTokenCache(wechat_settings, redis)
    wechat_redis = WeChatSender(wechat_settings, wechat_tokens_redis)
    wechat_tokens_mem = AccessTokenCache(wechat_settings, None)
    wechat_mem = WeChatSender(wechat_settings, wechat_tokens_mem)

    async def close_wechat(sender: Any, tokens: Any) -> None:
        await sender.close()
        await tokens.close()

    sms = msgs("sms", lambda n: f"+86138{n % 100_000_000:08d}")
    email = msgs("email", lambda n: f"shopper{n}@example.com")
    wx = msgs("wechat", lambda n: f"o-user-{n}")
    plain, tls = info["smtp"]["port"], info["smtp_tls"]["port"]
    cases = [
        Case("sms: TwilioSmsSender", "twilio", twilio.send_batch, sms,
             "official SDK (aiohttp), concurrency 20 (default)", twilio.close),
        Case("email: SmtpEmailSender, pool", "smtp", smtp_plain.send_batch, email,
             "pool of 4 connections (default), no TLS", smtp_plain.close),
        Case("email: aiosmtplib.send per message", "smtp", per_message(plain, False), email,
             "baseline: new connection per message, 4 at a time, no TLS"),
        Case("email: SmtpEmailSender, pool, STARTTLS", "smtp_tls", smtp_tls.send_batch, email,
             "pool of 4, STARTTLS (TLS 1.3, self-signed EC P-256 cert)", smtp_tls.close),
        Case("email: aiosmtplib.send per message, STARTTLS", "smtp_tls", per_message(tls, True),
             email, "baseline: new connection + STARTTLS handshake per message, 4 at a time"),
        Case("wechat: WeChatSender, token cache in Redis", "wechat", wechat_redis.send_batch, wx,
             "httpx, concurrency 20 (default); AccessTokenCache on Redis, as the worker",
             lambda: close_wechat(wechat_redis, wechat_tokens_redis)),
        Case("wechat: WeChatSender, token cache in process", "wechat", wechat_mem.send_batch, wx,
             "as above, AccessTokenCache without Redis (embedded mode)",
             lambda: close_wechat(wechat_mem, wechat_tokens_mem)),
    ]  # fmt: skip
    return [c for c in cases if not args.only or any(o in c.name for o in args.only.split(","))]


# ---------------------------------------------------------------- measuring


def outcome_of(result: Any) -> str:
    return "sent" if result is True else str(getattr(result, "outcome", result))


async def one_run(case: Case, fakes: Fakes, rnd: int, args: argparse.Namespace) -> dict[str, float]:
    messages = case.messages(rnd, args.messages)
    batches = [messages[i : i + args.batch] for i in range(0, len(messages), args.batch)]
    own0, fake0 = os.times(), fakes.cpu()
    started = time.perf_counter()
    results: list[Any] = []
    for batch in batches:
        results += await case.send(batch)
    elapsed = time.perf_counter() - started
    own1, fake1 = os.times(), fakes.cpu()
    sent = sum(outcome_of(r) == "sent" for r in results)
    counts = fakes.counts()[case.fake]
    own_cpu = (own1.user - own0.user) + (own1.system - own0.system)
    ok = sent == len(messages) == counts["messages"] == counts["distinct"]
    if not ok:
        others = sorted({outcome_of(r) for r in results} - {"sent"})
        sys.exit(f"{case.name}: {sent}/{len(messages)} sent, fake got {counts}; other: {others}")
    return {
        "seconds": elapsed,
        "rate": len(messages) / elapsed,
        "cpu_ms": 1000 * own_cpu / len(messages),
        "fake_cpu_ms": 1000 * (fake1 - fake0) / len(messages),
        "connections": counts["connections"] if counts["connections"] is not None else -1,
        "token_calls": counts["token_calls"] if counts["token_calls"] is not None else -1,
    }


async def run_all(fakes: Fakes, args: argparse.Namespace) -> list[Case]:
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    cases = build_cases(fakes.info, args, redis)
    try:
        for case in cases:  # warm up: connections, TLS, the access token, imports
            await one_run(case, fakes, 99, argparse.Namespace(**{**vars(args), "messages":
                                                                  args.batch}))  # fmt: skip
        for rnd in range(args.rounds):
            for case in cases:  # interleaved, so a noisy moment does not hit one case only
                r = await one_run(case, fakes, rnd, args)
                case.rounds.append(r)
                print(
                    f"round {rnd + 1} {case.name:<48} {r['rate']:7.0f} msgs/s  "
                    f"{r['seconds']:.2f} s  sender CPU {r['cpu_ms']:.3f} ms/msg  "
                    f"fake CPU {r['fake_cpu_ms']:.3f} ms/msg  connections {r['connections']}",
                    flush=True,
                )
    finally:
        for case in cases:
            if case.close is not None:
                await case.close()
        await redis.delete(f"bis:wechat:{fakes.info['wechat']['appid']}:token")
        await redis.aclose()
    return cases


# ---------------------------------------------------------------- report


def table(cases: list[Case]) -> list[str]:
    n = len(cases[0].rounds)
    lines = [
        "| channel / sender | "
        + " | ".join(f"round {i + 1} msgs/s" for i in range(n))
        + " | **median msgs/s** | median s | sender CPU ms/msg | fake CPU ms/msg "
        "| connections opened / run | >= 1000/s |",
        "|---|" + "---:|" * (n + 5) + "---|",
    ]
    for c in cases:
        med = {k: statistics.median(r[k] for r in c.rounds) for k in c.rounds[0]}
        conns = "" if med["connections"] < 0 else f"{med['connections']:.0f}"
        verdict = "met" if med["rate"] >= TARGET else "NOT met"
        lines.append(
            f"| {c.name} | " + " | ".join(f"{r['rate']:.0f}" for r in c.rounds)
            + f" | **{med['rate']:.0f}** | {med['seconds']:.2f} | {med['cpu_ms']:.3f} "
            f"| {med['fake_cpu_ms']:.3f} | {conns} | {verdict} |"
        )  # fmt: skip
    return lines


def ratios(cases: list[Case]) -> list[str]:
    by = {c.name: statistics.median(r["rate"] for r in c.rounds) for c in cases}
    lines = []
    for pooled, baseline, label in (
        ("email: SmtpEmailSender, pool", "email: aiosmtplib.send per message", "no TLS"),
        ("email: SmtpEmailSender, pool, STARTTLS",
         "email: aiosmtplib.send per message, STARTTLS", "STARTTLS"),
    ):  # fmt: skip
        if pooled in by and baseline in by:
            lines.append(
                f"- SMTP connection reuse vs a new connection per message ({label}): "
                f"{by[pooled]:.0f} / {by[baseline]:.0f} msgs/s = "
                f"**{by[pooled] / by[baseline]:.2f}x**"
            )
    return lines


def section(args: argparse.Namespace, cases: list[Case]) -> str:
    now = datetime.now(UTC)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    libs = ", ".join(f"{p} {version(p)}" for p in ("twilio", "aiohttp", "aiosmtplib", "httpx",
                                                   "aiosmtpd", "uvicorn"))  # fmt: skip
    return "\n".join([
        f"## {now:%Y-%m-%d} — channel senders into the local fake providers", "",
        f"- command: `{shlex.join(['.venv/bin/python', 'bench/channels.py', *sys.argv[1:]])}`",
        f"- date: {now:%Y-%m-%d %H:%M} UTC; source: {source_state()}",
        f"- machine: nproc={os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; {libs}",
        f"- per run: {args.messages} messages per channel, `send_batch` on batches of "
        f"{args.batch}, one batch after the other, one process, plain asyncio loop (as the "
        "worker's dramatiq AsyncIO middleware), OutgoingMessage built directly (zh-CN texts "
        "rendered once by backinstock.dispatch.render; email with text + HTML), every "
        f"recipient distinct; {args.rounds} rounds, cases interleaved, after one warm-up "
        f"batch of {args.batch} per case (connections, TLS and the access token are then "
        "already there, as in a running worker); msgs/s = messages / wall time of the run",
        "- fakes: tests/fakes FakeTwilio, FakeSMTP (aiosmtpd; a second one with STARTTLS "
        "required), FakeWeChat, all in ONE separate process started by the script "
        "(uvicorn / aiosmtpd threads), no rate limits or injected failures; each run checks "
        "that the fake accepted every message exactly once. The sender process and the "
        "fakes' process share the host's 2 cores (fake CPU ms/msg is the fakes' process)",
        "- sender CPU ms/msg: user+system CPU of this (the sender's) process during the run",
        "", *table(cases), "", *ratios(cases), "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="per channel and run")
    parser.add_argument("--batch", type=int, default=200, help="messages per send_batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma-separated substrings of case names")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    parser.add_argument("--serve-fakes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fakes:
        serve_fakes()
        return
    os.environ.setdefault("BACKINSTOCK_LOG_LEVEL", "WARNING")
    fakes = Fakes()
    try:
        cases = asyncio.run(run_all(fakes, args))
    finally:
        fakes.close()
    lines = [*table(cases), "", *ratios(cases)]
    print("\n" + "\n".join(lines))
    if args.write:
        write_results(section(args, cases))
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
