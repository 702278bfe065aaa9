"""``backinstock`` commands run in this process, through typer's runner.

For what a process start adds nothing to (an option's spelling, a refusal, a key written to
a database): each in-process run saves an interpreter start and the package's imports. A
command the README runs keeps a test that runs it as its own process.
"""

from __future__ import annotations

from typer.testing import CliRunner, Result

from backinstock.cli import app
from backinstock.ops.logging import configure_logging


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """``backinstock ARGS`` with ``env`` added to the environment; stdout and stderr apart."""
    try:
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        configure_logging("WARNING", json=False)  # the command set up logging for itself
