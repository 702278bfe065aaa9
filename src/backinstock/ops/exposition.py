"""The worker host's metrics endpoint (``backinstock worker --metrics-port N``).

Dramatiq runs a worker in several processes, each counting on its own. With
``PROMETHEUS_MULTIPROC_DIR`` set before they start (the ``worker`` command sets it, on a
directory it empties first), prometheus_client keeps each process's values in a file of
its own there, and this endpoint, a process Dramatiq forks beside the workers
(``--fork-function``), serves their sum: one scrape per host, whatever the process count.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
HOST = "BACKINSTOCK_WORKER_METRICS_HOST"
PORT = "BACKINSTOCK_WORKER_METRICS_PORT"
FORK_FUNCTION = "backinstock.ops.exposition:serve_worker_metrics"


def prepare_directory(directory: Path) -> None:
    """Create the directory, or empty it of a previous run's files: counters start at 0
    with the worker (a restart is a counter reset, which ``rate()`` expects)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def serve_worker_metrics() -> int:
    """Serve the worker processes' summed metrics until Dramatiq stops this process."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ[MULTIPROC_DIR])  # type: ignore[no-untyped-call]
    _, thread = start_http_server(
        int(os.environ[PORT]), addr=os.environ.get(HOST, "127.0.0.1"), registry=registry
    )
    thread.join()  # SIGTERM: Dramatiq's handler exits the process
    return 0
