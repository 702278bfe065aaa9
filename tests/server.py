"""Run the real ``backinstock`` command as a subprocess, for tests that need a real server
or worker, including ones that kill it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.waiting import eventually_sync


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackinstockProcess:
    """``python -m backinstock <args>`` in its own process group, so that a kill takes its
    children (dramatiq's worker processes) with it."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._env = {**os.environ, **env}
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "backinstock", *self.args],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks, no cleanup."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=15)
        self._proc = None

    def terminate(self, timeout: float = 40) -> float:
        """SIGTERM to the main process only, as an orchestrator sends it (Dramatiq's main
        process passes it on to its workers); returns the seconds it took to exit."""
        assert self._proc is not None
        started = time.monotonic()
        os.kill(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._proc = None
        return time.monotonic() - started

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self.terminate(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.kill()
        self._proc = None


class ServerProcess(BackinstockProcess):
    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port)], env, log_path)

    def start(self) -> None:
        super().start()
        eventually_sync(self._healthy, 30, "the server answers /healthz")

    def _healthy(self) -> bool:
        if not self.running:
            raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence, that a test may stop
    and start again (on the same port) to play an outage. Never the suite's shared Redis."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is needed for this test"
        args = [redis_server, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self._workdir)]
        with (self._workdir / "redis.log").open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        eventually_sync(self._pongs, 10, "redis-server answers PING")

    def _pongs(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None


class PrometheusServer:
    """Debian's ``prometheus`` on a free loopback port, with a configuration directory the
    test lays out (the repository's files, unchanged, plus its targets) and its own
    storage. Fails rather than skips without the binary (.ci/run installs it)."""

    def __init__(self, config_dir: Path, workdir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._config_dir = config_dir
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prometheus = shutil.which("prometheus")
        assert prometheus, "prometheus is needed (Debian's prometheus package; .ci/run installs it)"
        args = [
            prometheus,
            f"--config.file={self._config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self._workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self._workdir / "prometheus.log").open("ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        eventually_sync(self._ready, 30, "prometheus is ready")

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            log = (self._workdir / "prometheus.log").read_text(errors="replace")
            raise RuntimeError(f"prometheus exited: {log[-2000:]}")
        try:
            return httpx.get(f"{self.base_url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query's result (a vector: each item has ``metric`` and ``value``)."""
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def alert_states(self, name: str) -> set[str]:
        response = httpx.get(f"{self.base_url}/api/v1/alerts", timeout=10)
        return {
            a["state"]
            for a in response.json()["data"]["alerts"]
            if a["labels"]["alertname"] == name
        }

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None
