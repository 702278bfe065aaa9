"""The widget's released versions: one file per version, served as written (plain modern
JavaScript, no build step).

A store may pin a version (``/widget/v1.0.0/widget.js``) and check it with Subresource
Integrity, so a released file never changes: :data:`RELEASES` records each version's
SHA-384 (a test fails when a file no longer matches it), and a change ships as a new
version beside the old ones, which keep being served. ``/widget.js`` is the newest.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Every released version, oldest first, with the SRI hash of its file.
RELEASES: dict[str, str] = {
    "1.0.0": "sha384-tWWbIc1lBfVGN8BjBMnEx7lGJphuZOMUWxhRJfSf759//zJra3jpFSvVY0t8uVZ6",
    # 1.0.1: the status region stays in the accessibility tree while empty, so a screen
    # reader announces the outcome (1.0.0 hid it with display:none until it had text).
    "1.0.1": "sha384-c/ah5xQSL+I42xpbMyIdIPaM0gl5bjwbiQpFcshibMzqTqFMDS6JrVqGyNDbPbmb",
}
LATEST = next(reversed(RELEASES))


@dataclass(frozen=True)
class Release:
    version: str
    body: bytes
    gzipped: bytes

    @property
    def integrity(self) -> str:
        """The ``integrity`` attribute a ``<script>`` tag pins this file with."""
        return sri(self.body)

    @property
    def path(self) -> str:
        return versioned_path(self.version)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


def sri(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()


def versioned_path(version: str) -> str:
    return f"/widget/v{version}/widget.js"


def source_file(version: str) -> Path:
    return STATIC_DIR / f"widget-{version}.js"


def gzip_size(body: bytes) -> int:
    """The size a browser downloads: gzip at its highest level, as served."""
    return len(_gzip(body))


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=9, mtime=0)


@cache
def release(version: str) -> Release | None:
    """A released version's file, read once; None for a version never released."""
    if version not in RELEASES:
        return None
    body = source_file(version).read_bytes()
    return Release(version, body, _gzip(body))


def latest() -> Release:
    found = release(LATEST)
    assert found is not None
    return found
