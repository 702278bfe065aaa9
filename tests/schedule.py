"""The order the suite runs in: its longest tests first, spread over the xdist workers.

``make test`` runs ``pytest -n 2 --dist worksteal``. That scheduler hands each worker a
contiguous share of the collection (the first worker the first half, the second the rest)
and, when one runs dry, moves the tail of the other's queue to it. A long test that starts
late sets the wall time alone; one at the head of a share starts at once and is never moved.
So the tests below go to the heads of the shares, the longest first, each to the share with
the least of them so far; every other test keeps its place.

The seconds are rough costs on an idle 2-core machine, only to order by. A test missing here
is merely scheduled where it was collected.
"""

from __future__ import annotations

import os

import pytest

# Node-id prefixes and their rough seconds (a test counts under its longest prefix that
# matches: the most specific one).
LONG: dict[str, float] = {
    # PostgreSQL only: a 5,000-shopper wave throttled to 12.5 s, then a stall that must last
    # past the alert's 30 s threshold, both watched through Prometheus (5 s scrapes).
    "tests/ops/test_live_scrape.py::": 65,
    "tests/dispatch/test_crash_providers.py::test_two_kills_and_a_broker_flush_lose_nobody": 22,
    "tests/contract/test_fuzz.py::": 19,
    "tests/dispatch/test_crash_providers.py::test_two_kills_and_a_broker_flush_lose_nobody[wec": 11,
    "tests/restocks/test_crash_recovery.py::": 14,
    "tests/test_demo.py::test_the_demo_fills_its_own_instance": 11,
    "tests/dispatch/test_crash_providers.py::test_embedded_server_killed_and_stopped_mid_wave": 10,
    "tests/dispatch/test_crash_providers.py::test_sigterm_mid_wave": 8,
    "tests/test_readme.py::test_readme_api_tour_runs_as_written": 8,
    "tests/privacy/test_no_plaintext.py::": 7,
    "tests/test_demo.py::": 5,
    "tests/ops/test_redis_outage.py::": 5,
    "tests/dashboard/test_browser.py::": 4,
    "tests/restocks/test_planner_properties.py::": 4,
    "tests/test_field_limits.py::test_the_maximum_is_accepted_and_one_more_is_refused"
    "[/v1/coupons/pools:codes:201]": 4,
    "tests/senders/test_mime_properties.py::": 3,
    "tests/senders/test_mime.py::test_the_hostile_corpus": 3,
    "tests/ops/test_forwarded_headers.py::": 3,
    "tests/test_serve_startup.py::": 3,
}


def seconds(nodeid: str) -> float:
    """The rough cost of a test, 0 for one not listed."""
    matches = [prefix for prefix in LONG if nodeid.startswith(prefix)]
    return LONG[max(matches, key=len)] if matches else 0.0


def _skipped(item: pytest.Item) -> bool:
    """Skipped whatever happens (a backend's tests on the other backend): costs nothing."""
    if item.get_closest_marker("skip") is not None:
        return True
    return any(mark.args and mark.args[0] is True for mark in item.iter_markers("skipif"))


def shares(total: int, workers: int) -> list[int]:
    """How many tests worksteal hands each worker at the start, in order."""
    sizes = []
    for worker in range(workers):
        size = total // (workers - worker)
        sizes.append(size)
        total -= size
    return sizes


def arrange(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The long tests at the heads of the workers' shares, the rest in collection order."""
    costs = {i.nodeid: 0.0 if _skipped(i) else seconds(i.nodeid) for i in items}
    long = sorted((i for i in items if costs[i.nodeid]), key=lambda i: -costs[i.nodeid])
    rest = [i for i in items if not costs[i.nodeid]]
    heads: list[list[pytest.Item]] = [[] for _ in range(max(1, workers))]
    loads = [0.0] * len(heads)
    for item in long:
        lightest = loads.index(min(loads))
        heads[lightest].append(item)
        loads[lightest] += costs[item.nodeid]
    arranged: list[pytest.Item] = []
    for head, size in zip(heads, shares(len(items), len(heads)), strict=True):
        filler = max(0, size - len(head))
        arranged += head + rest[:filler]
        rest = rest[filler:]
    return arranged + rest


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Each xdist worker collects and orders alike (the controller checks that they agree).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    items[:] = arrange(items, workers)
