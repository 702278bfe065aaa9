"""The README's "The API in five minutes" runs as written, and its error table lists every
error code the app can return.

Every ```sh block of that section (except one that starts a server with ``make run``) runs
in order, in one ``bash -euo pipefail``, in an empty directory, against a real
``backinstock serve`` on the embedded SQLite database, with the environment the server
has. Only two things are rewritten: ``http://127.0.0.1:8000`` becomes the test server's URL
and ``.venv/bin/backinstock`` becomes this interpreter's ``-m backinstock``.

An output comment in a block, ``# {…json…} → 201`` (possibly over several ``#`` lines) or
``# → 302 https://…``, is what the command before it prints: the status must be the one
shown, and the JSON must hold every key and literal value shown. ``…`` stands for any text
inside a string, for further keys (``, …}``) or further list items (``, …]``); an object
without ``…`` must have exactly the keys shown.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backinstock import errors
from tests.conftest import BACKEND
from tests.server import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## The API in five minutes"
README_URL = "http://127.0.0.1:8000"
README_CLI = ".venv/bin/backinstock"
ARROW = "→"
MORE = "__more__"
MARK = "@@readme-block-end@@"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _runnable_blocks() -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```$", _section(), flags=re.S | re.M)
    return [block for block in blocks if "make run" not in block]


def _expectations(block: str) -> list[str]:
    """The output comments of a block, each joined onto one line."""
    found: list[str] = []
    current: list[str] | None = None
    for line in block.splitlines():
        if not line.startswith("#"):
            current = None
            continue
        content = line[1:].strip()
        if current is None and (content.startswith("{") or content.startswith(ARROW)):
            current = []
        if current is None:
            continue
        current.append(content)
        if ARROW in content:
            found.append(" ".join(current))
            current = None
    return found


def _split(line: str) -> tuple[str, str]:
    """``{body} → rest`` or ``→ rest`` into (body, rest)."""
    if line.startswith(ARROW):
        return "", line[len(ARROW) :].strip()
    body, _, rest = line.rpartition(f" {ARROW} ")
    assert body, f"no ' {ARROW} status' in {line!r}"
    return body.strip(), rest.strip()


def _pattern(text: str) -> Any:
    """The README's JSON with ``…`` made into markers json can read."""
    text = re.sub(r",\s*…\s*\]", f', "{MORE}"]', text)
    text = re.sub(r",\s*…(?=\s*[,}])", f', "{MORE}": true', text)
    return json.loads(text)


def _wildcard(expected: str, actual: str) -> bool:
    regex = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(regex, actual, flags=re.S) is not None


def _match(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        keys = {k for k in expected if k != MORE}
        if MORE not in expected:
            assert set(actual) == keys, f"{where}: keys {sorted(actual)} != {sorted(keys)}"
        for key in keys:
            assert key in actual, f"{where}: no {key!r} in {sorted(actual)}"
            _match(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        items = [item for item in expected if item != MORE]
        if len(items) < len(expected):
            assert len(actual) >= len(items), f"{where}: {len(actual)} items"
        else:
            assert len(actual) == len(items), f"{where}: {len(actual)} items != {len(items)}"
        for i, item in enumerate(items):
            _match(item, actual[i], f"{where}[{i}]")
    elif isinstance(expected, str) and "…" in expected:
        assert isinstance(actual, str), f"{where}: {actual!r} is not a string"
        assert _wildcard(expected, actual), f"{where}: {actual!r} does not fit {expected!r}"
    else:
        assert type(actual) is type(expected) and actual == expected, (
            f"{where}: {actual!r} != {expected!r}"
        )


def _check_output(expected: str, actual: str, where: str) -> None:
    body_expected, rest_expected = _split(expected)
    body_actual, rest_actual = _split(actual)
    assert _wildcard(rest_expected, rest_actual), (
        f"{where}: printed {rest_actual!r} where the README shows {rest_expected!r}"
    )
    if not body_expected:
        assert not body_actual, f"{where}: a body where the README shows none"
        return
    _match(_pattern(body_expected), json.loads(body_actual), where)


def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> None:
    """A fresh clone's environment: no BACKINSTOCK_* setting but where the files live (the
    server and the shell share them) and the server's own URL for its links."""
    for name in list(os.environ):
        if name.startswith("BACKINSTOCK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BACKINSTOCK_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'bis.db'}")
    monkeypatch.setenv("BACKINSTOCK_KEY_FILE", str(tmp_path / "bis.keys.json"))
    monkeypatch.setenv("BACKINSTOCK_PUBLIC_BASE_URL", url)
    monkeypatch.setenv("BACKINSTOCK_LOG_LEVEL", "WARNING")


@pytest.mark.skipif(
    BACKEND != "sqlite", reason="the README's tour is the embedded mode (SQLite, no Redis)"
)
def test_readme_api_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shutil.which("curl") and shutil.which("python3"), "the README's blocks need both"
    blocks = _runnable_blocks()
    assert len(blocks) >= 8, "the section lost its runnable blocks"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _clean_environment(monkeypatch, tmp_path, url)
    cli = f"{shlex.quote(sys.executable)} -m backinstock"
    runnable = [b.replace(README_URL, url).replace(README_CLI, cli) for b in blocks]
    script = "".join(f"{block}\necho {MARK}\n" for block in runnable)
    shell_dir = tmp_path / "shell"
    shell_dir.mkdir()

    with ServerProcess({}, tmp_path / "serve.log", port=port):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=shell_dir,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=120,
        )
    outputs = done.stdout.split(f"{MARK}\n")
    failed_at = len(outputs) - 1
    assert done.returncode == 0, (
        f"block {failed_at + 1} of {len(blocks)} failed (exit {done.returncode}):\n"
        f"{blocks[min(failed_at, len(blocks) - 1)]}\nstdout: {outputs[-1][-2000:]}\n"
        f"stderr: {done.stderr[-2000:]}"
    )
    assert len(outputs) == len(blocks) + 1 and outputs[-1] == ""
    checked = 0
    for i, (block, output) in enumerate(zip(runnable, outputs, strict=False)):
        expected = _expectations(block)
        printed = [line for line in output.splitlines() if line.strip()]
        where = f"block {i + 1}"
        assert len(printed) == len(expected), (
            f"{where} printed {len(printed)} lines, the README shows {len(expected)}:\n{output}"
        )
        for n, (want, got) in enumerate(zip(expected, printed, strict=True)):
            _check_output(want, got, f"{where}, output {n + 1}")
            checked += 1
    assert checked >= 8


def _codes_in_source() -> set[str]:
    """Every error code the app can answer with: the ApiError classes' codes, the codes
    given by name, the error handlers' own, and the status map's (and its fallback)."""
    codes = {cls.code for cls in _subclasses(errors.ApiError)} | {errors.ApiError.code}
    codes |= set(errors._STATUS_CODES.values())
    for path in (ROOT / "src" / "backinstock").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r"\bcode=\"([a-z_]+)\"", text))
        codes |= set(re.findall(r"error_(?:response|body)\(\s*(?:\d+,\s*)?\"([a-z_]+)\"", text))
        codes |= set(re.findall(r"_STATUS_CODES\.get\([^,]+,\s*\"([a-z_]+)\"\)", text))
    return codes


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _codes_in_readme_table() -> set[str]:
    section = _section()
    table = section[section.index("| status | code | when |") :].split("\n\n", 1)[0]
    rows = [line.split("|") for line in table.splitlines()[2:]]
    return {code for row in rows for code in re.findall(r"`([a-z_]+)`", row[2])}


def test_readme_error_table_lists_every_code() -> None:
    in_source = _codes_in_source()
    in_table = _codes_in_readme_table()
    assert {"malformed_json", "method_not_allowed", "pool_exists"} <= in_source
    assert in_source - in_table == set(), "codes the README's error table does not list"
    assert in_table - in_source == set(), "codes in the README's error table the app lacks"
