"""Settings from ``BACKINSTOCK_*`` environment variables (and an optional ``.env`` file).

One small class per concern; :class:`Settings` bundles them. Every setting has a default that
is safe for the embedded mode; production mode (a PostgreSQL URL) refuses insecure ones.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import time
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PREFIX = "BACKINSTOCK_"


class _Section(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, env_file=".env", extra="ignore", frozen=True
    )


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CoreSettings(_Section):
    database_url: str = "sqlite+aiosqlite:///./backinstock.db"
    redis_url: str = ""
    # Connect and reply timeout of the API's Redis calls (rate limits, readiness): past it a
    # request counts its limits in this process instead of waiting.
    redis_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    public_base_url: str = "http://127.0.0.1:8000"
    allowed_link_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = Field(default=20, ge=1)
    # Proxies (comma-separated IPs or networks, or "*") whose X-Forwarded-For and
    # X-Forwarded-Proto are believed. Empty: none; the client IP is the TCP peer's. Trusting
    # a proxy lets it choose the IP every rate limit counts under: name only your own.
    forwarded_allow_ips: str = ""
    default_phone_region: str = "CN"
    # How far in the future a client's instant (a restock's or an order's occurred_at) may
    # lie, for clocks that run a little fast; later ones are refused (422).
    max_clock_skew_seconds: float = Field(default=300, ge=0, le=86_400)

    _split_hosts = field_validator("allowed_link_hosts", mode="before")(_split_csv)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded_broker(self) -> bool:
        """No Redis URL: the broker, rate limits and caches live in this process."""
        return not self.redis_url


class CryptoSettings(_Section):
    encryption_keys: str = ""
    blind_index_key: str = ""
    token_key: str = ""
    key_file: str = "./backinstock.keys.json"
    allow_generated_keys: bool = False


class WaveSettings(_Section):
    # A product's policy takes these bounds too. An interval of at least a second lets a
    # wave's run end once its due steps are written (a run goes on while a step is due);
    # the upper bounds keep a step's size and the time of the next one computable.
    batch_multiplier: float = Field(default=1.0, gt=0, le=1000)
    batch_interval_seconds: float = Field(default=600, ge=1, le=2_592_000)
    max_notifications: int = Field(default=3, ge=1)
    # A told shopper's unit is held this long from the time their message is planned;
    # 0: no holds (the default: holds pay only once a store's checkout honours them, and
    # they slow a wave down to its holds' pace). A product's policy may override it.
    hold_seconds: int = Field(default=0, ge=0, le=2_592_000)
    # How often each worker process looks for lost or due work (waves, expired claims).
    sweep_interval_seconds: float = Field(default=1.0, gt=0)
    # Pending notifications unclaimed for this long get a drain wake-up (once no wake-ups
    # wait ahead of them: worker.sweep_once).
    stale_after_seconds: float = Field(default=3.0, gt=0)
    embedded_worker_threads: int = Field(default=4, ge=1)
    # A claimed batch or wave step not finished within this is taken over by another worker.
    claim_lease_seconds: float = Field(default=15.0, gt=0)


class InDoubtPolicy(enum.StrEnum):
    """What to do with a message a crash left in flight (the provider may or may not have it)."""

    RECONCILE = "reconcile"  # ask the provider (SMS: Twilio's Messages list); resend if absent
    RESEND = "resend"  # send again (email: same Message-ID, so mail stores show it once)
    DROP = "drop"  # never risk a second message: mark it failed


class DeliverySettings(_Section):
    # Per channel, what settles a message left in doubt by a crash (docs/architecture.md).
    in_doubt_sms: InDoubtPolicy = InDoubtPolicy.RECONCILE
    in_doubt_email: InDoubtPolicy = InDoubtPolicy.RESEND
    in_doubt_wechat: InDoubtPolicy = InDoubtPolicy.RESEND
    # SIGTERM: how long in-flight provider calls may take to finish before the worker exits
    # anyway (under Kubernetes' default 30 s grace period, with room to spare).
    shutdown_grace_seconds: float = Field(default=20.0, gt=0, le=600)
    # A commit that marks a provider call as started also marks this many of the channel's
    # next messages, which then start without waiting for a commit of their own. After a
    # crash up to this many more per batch may be in doubt, and are settled by the channel's
    # policy like any other (never with drop, which always marks exactly). 0: exact.
    start_lookahead: int = Field(default=64, ge=0, le=200)
    # Providers' answers are recorded by a group commit once this many wait, or once the
    # oldest has waited this long (calls about to start commit at once, and take them
    # along). A crash leaves at most this many answered calls unrecorded: in doubt.
    record_results: int = Field(default=64, ge=1, le=100_000)
    record_after_seconds: float = Field(default=0.25, gt=0, le=3600)

    @field_validator("in_doubt_email", "in_doubt_wechat")
    @classmethod
    def _no_lookup(cls, value: InDoubtPolicy) -> InDoubtPolicy:
        if value is InDoubtPolicy.RECONCILE:
            raise ValueError("only SMS can be reconciled (Twilio lists what it accepted)")
        return value

    def lookahead(self, channel: str) -> int:
        return 0 if self.policy(channel) is InDoubtPolicy.DROP else self.start_lookahead

    def policy(self, channel: str) -> InDoubtPolicy:
        return {
            "sms": self.in_doubt_sms,
            "email": self.in_doubt_email,
            "wechat": self.in_doubt_wechat,
        }.get(channel, InDoubtPolicy.RESEND)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Rate:
    """``N/unit``: at most ``limit`` events per fixed window of ``window_seconds``."""

    limit: int
    window_seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        if not text.strip():
            return None
        match = _RATE.match(text)
        if not match:
            raise ValueError(f"rate must look like '300/minute', got {text!r}")
        return cls(int(match.group(1)), _UNIT_SECONDS[match.group(2)])


class RateLimitSettings(_Section):
    rate_limit_per_ip: str = "300/minute"
    rate_limit_per_contact: str = "10/hour"
    # A publishable key sits in a web page: anybody can use it, so its requests are counted
    # per client IP (whatever the key) and per contact, under tighter limits.
    publishable_rate_limit_per_ip: str = "10/minute"
    publishable_rate_limit_per_contact: str = "5/hour"

    @field_validator(
        "rate_limit_per_ip",
        "rate_limit_per_contact",
        "publishable_rate_limit_per_ip",
        "publishable_rate_limit_per_contact",
    )
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        Rate.parse(value)
        return value

    @cached_property
    def publishable_per_ip(self) -> Rate | None:
        return Rate.parse(self.publishable_rate_limit_per_ip)

    @cached_property
    def publishable_per_contact(self) -> Rate | None:
        return Rate.parse(self.publishable_rate_limit_per_contact)

    @cached_property
    def per_ip(self) -> Rate | None:
        return Rate.parse(self.rate_limit_per_ip)

    @cached_property
    def per_contact(self) -> Rate | None:
        return Rate.parse(self.rate_limit_per_contact)


_HOURS = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


class QuietHoursSettings(_Section):
    quiet_hours: str = "21:00-09:00"
    default_timezone: str = "Asia/Shanghai"

    @field_validator("quiet_hours")
    @classmethod
    def _valid_window(cls, value: str) -> str:
        if value.strip() and not _HOURS.match(value.strip()):
            raise ValueError("quiet hours must look like '21:00-09:00' or be empty")
        return value.strip()

    @property
    def window(self) -> tuple[time, time] | None:
        match = _HOURS.match(self.quiet_hours)
        if not match:
            return None
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        return time(h1, m1), time(h2, m2)


class SoldoutCompensation(enum.StrEnum):
    """What shoppers still in a wave's queue get when the SKU sells out again."""

    OFF = "off"  # nothing
    MESSAGE = "message"  # one "sold out again" message per wave, with their place in line
    COUPON = "coupon"  # the message plus an uploaded coupon code while any is left


class ConversionSettings(_Section):
    followup_after_seconds: int = Field(default=259_200, ge=0, le=31_536_000)
    attribution_window_seconds: int = Field(default=604_800, ge=0)
    # Generated codes are the prefix plus 8 characters, stored in a String(64) column.
    coupon_prefix: str = Field(default="BIS-", max_length=32)
    retention_days: int = Field(default=180, ge=1)
    # Follow-up decisions taken per sweeper tick (each a short transaction).
    followup_batch: int = Field(default=200, ge=1)
    # A product's policy may override it (``soldout_compensation``).
    soldout_compensation: SoldoutCompensation = SoldoutCompensation.OFF
    # A shopper still waiting this long for a sold-out SKU gets one message naming its
    # substitutes in stock (0: never). Bounded like FOLLOWUP_AFTER_SECONDS: the delay is
    # subtracted from a datetime in the sweeper, where an overflow would fail every tick.
    substitute_after_seconds: int = Field(default=0, ge=0, le=31_536_000)


class MetricsSettings(_Section):
    """What the API's /metrics reads from the database (the pipeline figures)."""

    # Scrapes within this many seconds of the last read share it (several Prometheus
    # servers, or a dashboard's own polling, cost one read). Shorter than the shipped scrape
    # interval (5 s): at 5 a scrape that came a hair early was served the previous read,
    # so a figure could be two intervals old and an alert fire an interval late.
    metrics_cache_seconds: float = Field(default=4.0, ge=0, le=300)
    # The stock feeds (locations) whose last event's age is shown. Empty: the first
    # METRICS_MAX_LOCATIONS locations by name. Locations are client input: each is a
    # series, so their number is capped.
    metrics_locations: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_max_locations: int = Field(default=50, ge=0, le=1000)

    _split_locations = field_validator("metrics_locations", mode="before")(_split_csv)


_CHANNELS = ("sms", "email", "wechat")


class OptInSettings(_Section):
    # Channels whose subscriptions made with a secret key also wait for the shopper to
    # confirm (double opt-in), e.g. "sms,email"; publishable keys' always do. WeChat
    # subscriptions are confirmed by the mini-program's own consent, so they never wait.
    double_opt_in_channels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a request may wait for its confirmation, keeping its place in line; then it
    # is erased.
    confirm_window_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)

    @field_validator("double_opt_in_channels", mode="before")
    @classmethod
    def _channels(cls, value: Any) -> Any:
        channels = _split_csv(value)
        unknown = [c for c in channels if c not in _CHANNELS]
        if unknown:
            raise ValueError(f"channels are {', '.join(_CHANNELS)}; got {', '.join(unknown)}")
        return channels


class DashboardSettings(_Section):
    # How long a dashboard sign-in lasts before the stats key must be entered again.
    dashboard_session_seconds: int = Field(default=28_800, ge=60)


class TwilioSettings(_Section):
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base: str = "https://api.twilio.com"
    # Messages per second across all workers (your account's or sender's limit); 0: none.
    twilio_rate_per_second: float = Field(default=0, ge=0)
    # Restock SMS are kept within this many segments by shortening the product name.
    sms_max_segments: int = Field(default=3, ge=1, le=10)

    @property
    def configured(self) -> bool:
        has_sender = bool(self.twilio_from or self.twilio_messaging_service_sid)
        return bool(self.twilio_account_sid and self.twilio_auth_token and has_sender)


class SmtpSettings(_Section):
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = True
    smtp_from: str = ""
    smtp_rate_per_second: float = Field(default=0, ge=0)
    # Connections each worker process keeps open to the relay, one message on each at a time.
    smtp_connections: int = Field(default=4, ge=1, le=100)

    @property
    def configured(self) -> bool:
        return bool(self.smtp_host and self.smtp_from)


class WeChatSettings(_Section):
    wechat_app_id: str = ""
    wechat_app_secret: str = ""
    wechat_template_id: str = ""
    wechat_page: str = "pages/product/index"
    wechat_miniprogram_state: str = "formal"
    wechat_api_base: str = "https://api.weixin.qq.com"
    wechat_rate_per_second: float = Field(default=0, ge=0)
    # Template keys -> value sources (product_name, status, text, data.<key>), as JSON,
    # e.g. {"thing1": "product_name", "phrase2": "status"}; empty: the sender's default.
    wechat_field_map: dict[str, str] = Field(default_factory=dict)

    @property
    def configured(self) -> bool:
        return bool(self.wechat_app_id and self.wechat_app_secret and self.wechat_template_id)


@dataclass(frozen=True)
class Settings:
    core: CoreSettings
    crypto: CryptoSettings
    waves: WaveSettings
    delivery: DeliverySettings
    rate_limits: RateLimitSettings
    quiet_hours: QuietHoursSettings
    conversion: ConversionSettings
    opt_in: OptInSettings
    dashboard: DashboardSettings
    twilio: TwilioSettings
    smtp: SmtpSettings
    wechat: WeChatSettings
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            core=CoreSettings(),
            crypto=CryptoSettings(),
            waves=WaveSettings(),
            delivery=DeliverySettings(),
            rate_limits=RateLimitSettings(),
            quiet_hours=QuietHoursSettings(),
            conversion=ConversionSettings(),
            opt_in=OptInSettings(),
            dashboard=DashboardSettings(),
            twilio=TwilioSettings(),
            smtp=SmtpSettings(),
            wechat=WeChatSettings(),
            metrics=MetricsSettings(),
        )
