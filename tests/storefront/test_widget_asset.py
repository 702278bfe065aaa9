"""The widget as a file: released versions never change (Subresource Integrity pins
them), /widget.js is the newest, both load from any page, and the README's snippet, sizes
and integrity are the served file's."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import httpx

from backinstock.storefront import widget

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_a_released_file_never_changes() -> None:
    """Change the widget as a new version (a new file and a new RELEASES entry): a page that
    pinned an older one with `integrity` keeps working."""
    files = sorted(p.name for p in widget.STATIC_DIR.glob("widget-*.js"))
    assert files == sorted(f"widget-{v}.js" for v in widget.RELEASES)
    for version, integrity in widget.RELEASES.items():
        body = widget.source_file(version).read_bytes()
        assert widget.sri(body) == integrity, (
            f"widget-{version}.js changed after its release: ship the change as a new "
            f"version (its file's hash is {widget.sri(body)})"
        )
        assert f'const VERSION = "{version}";' in body.decode(), "the file names its version"
    assert list(widget.RELEASES) == sorted(widget.RELEASES, key=_version_key)
    assert max(widget.RELEASES, key=_version_key) == widget.LATEST


def test_the_widget_writes_no_markup_and_calls_nobody_else() -> None:
    """Text from the API or the page only ever becomes text nodes; the one request the
    widget makes goes to the service it was loaded from (or data-backinstock-api)."""
    for version in widget.RELEASES:
        source = widget.source_file(version).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, sink
        assert "new Function" not in source and 'setAttribute("on' not in source
        assert re.findall(r"https?://", source) == [], "no third-party (or any fixed) host"
        assert source.count("fetch(") == 1 and 'api + "/v1/subscriptions"' in source


async def test_the_newest_is_cached_briefly_and_a_pinned_version_for_a_year(
    client: httpx.AsyncClient,
) -> None:
    latest = widget.latest()
    newest = await client.get("/widget.js", headers={"accept-encoding": "identity"})
    assert newest.status_code == 200
    assert newest.content == latest.body
    assert newest.headers["content-type"] == "text/javascript; charset=utf-8"
    assert newest.headers["cache-control"] == "public, max-age=300"
    assert newest.headers["access-control-allow-origin"] == "*", "SRI with crossorigin needs it"
    assert newest.headers["x-content-type-options"] == "nosniff"

    pinned = await client.get(latest.path, headers={"accept-encoding": "identity"})
    assert pinned.status_code == 200 and pinned.content == latest.body
    assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert widget.sri(pinned.content) == widget.RELEASES[widget.LATEST]

    revalidated = await client.get(latest.path, headers={"if-none-match": pinned.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""

    for missing in ("/widget/v0.0.1/widget.js", "/widget/v..%2F..%2Fetc/widget.js"):
        unknown = await client.get(missing)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "not_found"


async def test_browsers_get_it_gzipped(client: httpx.AsyncClient) -> None:
    latest = widget.latest()
    response = await client.get(
        "/widget.js", headers={"accept-encoding": "gzip, deflate, br"}, extensions={}
    )
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.content == latest.body  # httpx decodes it
    assert int(response.headers["content-length"]) == widget.gzip_size(latest.body)
    assert gzip.decompress(latest.gzipped) == latest.body
    refused = await client.get("/widget.js", headers={"accept-encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n### The notify-me widget\n")
    return text[start : text.index("\n### ", start + 1)]


def test_the_readme_gives_the_pinned_snippet_its_integrity_and_every_versions_size() -> None:
    section = _readme_section()
    snippet = re.search(r"```html\n(.*?)```", section, flags=re.S)
    assert snippet, "the README has the snippet a store pastes"
    latest = widget.latest()
    assert f'src="https://notify.shop.example{latest.path}"' in snippet.group(1)
    assert f'integrity="{latest.integrity}"' in snippet.group(1)
    assert 'crossorigin="anonymous"' in snippet.group(1)
    rows = re.findall(
        r"^\| `(\d+\.\d+\.\d+)` \| ([\d,]+) bytes \| ([\d,]+) bytes \| `(sha384-[^`]+)` \|.*$",
        section,
        flags=re.M,
    )
    stated = {v: (int(raw.replace(",", "")), int(gz.replace(",", "")), i) for v, raw, gz, i in rows}
    actual = {}
    for version, integrity in widget.RELEASES.items():
        body = widget.source_file(version).read_bytes()
        actual[version] = (len(body), widget.gzip_size(body), integrity)
    assert stated == actual, "the README's table of versions states each file's sizes"
