"""The alert rules in monitoring/ are valid and do what their unit tests say, by Debian's
``promtool`` (the ``prometheus`` package, which .ci/run installs), and each one has a test
and an entry in the operations page. Without promtool this fails rather than skips."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from backinstock.config import MetricsSettings
from tests.ops.shipped import MONITORING, scrape_seconds

ROOT = Path(__file__).resolve().parents[2]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian's prometheus package; .ci/run installs it)"
    return subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    checked = _promtool("check", "config", "prometheus.yml")  # its rule files too
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = _promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _alerts() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"]]


def test_every_alert_is_tested_and_documented() -> None:
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", operations, re.MULTILINE))
    for alert in _alerts():
        assert alert in tested, f"{alert}: no promtool test shows it firing"
        assert alert in headings, f"{alert}: no '### {alert}' in docs/operations.md"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's query (as a recording rule); the live scrape test
    runs them against a Prometheus with data."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    rules = [{"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_scrape_of_the_shipped_configuration_gets_a_fresh_read() -> None:
    """The API shares a read of the pipeline figures with the scrapes that come within
    METRICS_CACHE_SECONDS of it: at the scrape interval itself, a scrape a hair early got
    the previous read, a figure two intervals old, and an alert an interval late."""
    assert MetricsSettings().metrics_cache_seconds < scrape_seconds()
