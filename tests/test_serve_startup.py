"""`backinstock serve` writes JSON lines from its first line when LOG_JSON is true (the
default): where it listens is a `serving` log line, not console text. The coloured banner is
for a person at a terminal: shown when stderr is a TTY, or when LOG_JSON is false."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest
from rich.console import Console

from backinstock import cli
from backinstock.config import Settings
from tests.waiting import eventually_sync


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_writes_only_json_lines_and_starts_with_serving(migrated: str) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "backinstock", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BACKINSTOCK_LOG_JSON": "true", "BACKINSTOCK_LOG_LEVEL": "INFO"},
    )
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.communicate()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        eventually_sync(healthy, 60, "serve answers /healthz")
    finally:
        process.terminate()
        out, errors = process.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # all JSON
    for line in errors.splitlines():
        if line.strip():
            json.loads(line)  # stderr, if anything, is JSON too: no console banner
    assert "\x1b[" not in out + errors
    serving = [line for line in lines if line["event"] == "serving"]
    assert len(serving) == 1
    assert serving[0]["url"] == f"http://127.0.0.1:{port}"
    assert serving[0]["docs"].endswith("/docs")
    assert "keys create" in serving[0]["create_key"]
    uvicorn_start = next(i for i, line in enumerate(lines) if "Uvicorn running" in line["event"])
    assert lines.index(serving[0]) < uvicorn_start


def _banner_text(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, *, json_logs: bool, tty: bool
) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "err", Console(file=buffer, force_terminal=False, width=200))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    core = settings.core.model_copy(update={"log_json": json_logs, "log_level": "WARNING"})
    cli._banner(replace(settings, core=core), "127.0.0.1", 8000)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("json_logs", "tty", "shown"),
    [(True, False, False), (True, True, True), (False, False, True), (False, True, True)],
)
def test_console_banner_only_for_a_terminal_or_console_logs(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, json_logs: bool, tty: bool, shown: bool
) -> None:
    text = _banner_text(monkeypatch, settings, json_logs=json_logs, tty=tty)
    assert ("backinstock on http://127.0.0.1:8000" in text) is shown
