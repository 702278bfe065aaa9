from __future__ import annotations

import pytest

from tests.contract import report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in report.SECTIONS.items():
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
