"""The dashboard's HTML: Jinja2 templates (autoescaped) and cache-busted static URLs."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import jinja2

_HERE = Path(__file__).resolve().parent
STATIC_DIR = _HERE / "static"
# The shopper's page (storefront) extends base.html too: one look for every page.
TEMPLATES_DIR = _HERE / "templates"
STATIC_PREFIX = "/dashboard/static"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@cache
def asset_url(name: str) -> str:
    """Static files are cached for a year, so their URL changes whenever their content does."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"{STATIC_PREFIX}/{name}?v={digest}"


_templates.globals["asset"] = asset_url


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    if rest == 0:
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{seconds // 60} minutes"


def login(session_seconds: int, message: str | None = None) -> str:
    return _templates.get_template("login.html").render(
        message=message, session_hours=_duration(session_seconds)
    )


def dashboard(key_name: str) -> str:
    return _templates.get_template("dashboard.html").render(key_name=key_name)
