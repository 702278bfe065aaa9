"""The import graph points down: no import runs from a lower floor to a higher one, no modules
import one another in a loop, and below the web floor no packages do either.

The floors are written once, here; docs/architecture.md ("Layers") says why each is where
it is. Every import counts, wherever it is written: at the top of a module, inside a
function (a deferred import is still a dependency) or under ``if TYPE_CHECKING:`` (a loop
through annotations is still one a reader has to follow). None is exempt.

A module's floor is that of the pattern naming it most specifically (the one with the most
literal characters); a ``*`` stands for one dotted part. ``backinstock.*`` puts a new
top-level module on the foundation floor and ``backinstock.*.*`` a new module of a domain
package on the domain floor, until it is placed otherwise: a new module that imports
upward fails here and has to be placed on purpose.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import grimp
import pytest


@dataclass(frozen=True)
class Floor:
    name: str
    patterns: tuple[str, ...]


# Top to bottom. A module may import modules of its own floor and of the floors below it.
FLOORS: tuple[Floor, ...] = (
    # Programs people run, and generators.
    Floor(
        "entry",
        (
            "backinstock.__main__",
            "backinstock.cli",
            "backinstock.demo",
            "backinstock.openapi",
            "backinstock.status",
        ),
    ),
    # The two processes: the API app (which may start the embedded worker) and the worker
    # (broker consumers: actors and the sweeper). Routers are below, so they cannot import it.
    Floor("process", ("backinstock.main", "backinstock.worker")),
    # HTTP: routers, request dependencies, pages, middleware, the strict-JSON route class.
    Floor(
        "web",
        (
            "backinstock.deps",
            "backinstock.strict_json",
            "backinstock.*.router",
            "backinstock.*.*_router",
            "backinstock.*.deps",
            "backinstock.*.pages",
            "backinstock.ops.middleware",
            "backinstock.ops.cors",
        ),
    ),
    # What a process holds and starts with: runtime handles, the broker and task names,
    # migrations.
    Floor("runtime", ("backinstock.runtime", "backinstock.tasks", "backinstock.migrations")),
    # Every package's services, and the flows across them (``flows``, the highest package
    # here: it calls the owners of the tables a story writes); the packages among them
    # import in one direction.
    Floor(
        "domain",
        ("backinstock.*.*", "backinstock.*.*.*", "backinstock.flows.*", "backinstock.keyops"),
    ),
    # Tables and API shapes (and the attributes' rules, which both a shape and the
    # templates' variant choice read).
    Floor(
        "data",
        (
            "backinstock.models",
            "backinstock.*.models",
            "backinstock.*.schemas",
            "backinstock.subscriptions.attributes",
        ),
    ),
    # What everything may use: settings, database, crypto, contacts, errors, input types.
    Floor(
        "foundation",
        ("backinstock", "backinstock.*", "backinstock.ops.logging", "backinstock.ops.metrics"),
    ),
)
WEB = "web"  # below this floor, packages import one another in one direction only

Graph = Mapping[str, Iterable[str]]


def _matches(pattern: str, module: str) -> bool:
    parts, wanted = module.split("."), pattern.split(".")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=True)
    )


def _specificity(pattern: str) -> int:
    return len(pattern.replace("*", "").replace("?", ""))


def floor_of(module: str, floors: Sequence[Floor] = FLOORS) -> int:
    """The index of the module's floor (0 is the top); ValueError if none or two claim it."""
    matches = [
        (_specificity(pattern), index)
        for index, floor in enumerate(floors)
        for pattern in floor.patterns
        if _matches(pattern, module)
    ]
    if not matches:
        raise ValueError(f"{module} is on no floor: add it to FLOORS")
    best = max(score for score, _ in matches)
    claimed = sorted({index for score, index in matches if score == best})
    if len(claimed) > 1:
        names = " and ".join(floors[i].name for i in claimed)
        raise ValueError(f"{module} matches {names} equally: name it on one")
    return claimed[0]


def upward_imports(graph: Graph, floors: Sequence[Floor] = FLOORS) -> list[tuple[str, str]]:
    return sorted(
        (importer, imported)
        for importer, imports in graph.items()
        for imported in imports
        if floor_of(imported, floors) < floor_of(importer, floors)
    )


def loops(graph: Graph) -> list[list[str]]:
    """Every set of nodes that import one another, directly or not (strongly connected
    components of two or more, or a node importing itself)."""
    edges = {node: sorted(set(targets)) for node, targets in graph.items()}
    for targets in list(edges.values()):
        for target in targets:
            edges.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    for root in sorted(edges):
        if root in index:
            continue
        # Tarjan's algorithm, iteratively: (node, next edge to follow).
        work = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if edge < len(edges[node]):
                work.append((node, edge + 1))
                target = edges[node][edge]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(found)


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(graph: Graph, floors: Sequence[Floor] = FLOORS) -> dict[str, set[str]]:
    """Imports between packages, counting only modules below the web floor (routers live in
    their domain's package by choice: they are the domain's door, and may import across)."""
    web = next(i for i, floor in enumerate(floors) if floor.name == WEB)
    packages: dict[str, set[str]] = {}
    for importer, imports in graph.items():
        if floor_of(importer, floors) <= web:
            continue
        for imported in imports:
            if floor_of(imported, floors) > web and package_of(importer) != package_of(imported):
                packages.setdefault(package_of(importer), set()).add(package_of(imported))
    return packages


def floor_name(module: str, floors: Sequence[Floor] = FLOORS) -> str:
    return floors[floor_of(module, floors)].name


def problems(
    graph: Graph,
    floors: Sequence[Floor] = FLOORS,
    where: Callable[[str, str], str] = lambda importer, imported: "",
) -> list[str]:
    """Everything wrong with the graph, one line each; ``where`` tells where an import is."""
    found = []
    for module in sorted(set(graph) | {m for targets in graph.values() for m in targets}):
        try:
            floor_of(module, floors)
        except ValueError as exc:
            found.append(str(exc))
    if found:
        return found
    for importer, imported in upward_imports(graph, floors):
        found.append(
            f"upward: {importer} ({floor_name(importer, floors)}) imports "
            f"{imported} ({floor_name(imported, floors)}){where(importer, imported)}"
        )
    module_loops = loops(graph)
    for loop in module_loops:
        found.append(f"modules import one another: {', '.join(loop)}")
    for loop in loops(package_graph(graph, floors)):
        if loop in module_loops:  # top-level modules are packages of their own
            continue
        found.append(f"packages import one another: {', '.join(loop)}")
        web = next(i for i, floor in enumerate(floors) if floor.name == WEB)
        found += [
            f"    {importer} imports {imported}"
            for importer, imports in sorted(graph.items())
            for imported in sorted(imports)
            if package_of(importer) in loop
            and package_of(imported) in loop
            and package_of(importer) != package_of(imported)
            and min(floor_of(importer, floors), floor_of(imported, floors)) > web
        ]
    return found


def _real_graph() -> tuple[grimp.ImportGraph, dict[str, set[str]]]:
    imports = grimp.build_graph("backinstock", cache_dir=None)
    return imports, {m: set(imports.find_modules_directly_imported_by(m)) for m in imports.modules}


def test_the_package_imports_only_down_and_in_no_loop() -> None:
    imports, graph = _real_graph()

    def where(importer: str, imported: str) -> str:
        details = imports.get_import_details(importer=importer, imported=imported)
        return "".join(f"\n    line {d['line_number']}: {d['line_contents']}" for d in details)

    found = problems(graph, where=where)
    assert not found, "\n".join(found)


def test_the_floors_place_modules_as_documented() -> None:
    assert floor_name("backinstock.restocks.router") == "web"
    assert floor_name("backinstock.dispatch.in_doubt_router") == "web"
    assert floor_name("backinstock.dashboard.deps") == "web"
    assert floor_name("backinstock.dispatch.service") == "domain"
    assert floor_name("backinstock.flows.restock") == "domain"
    assert floor_name("backinstock.senders.models") == "data"
    assert floor_name("backinstock.ops.metrics") == "foundation"
    assert floor_name("backinstock.identity") == "foundation"
    assert floor_name("backinstock.dispatch") == "foundation"  # a package's __init__


def test_only_routers_and_processes_call_the_flows() -> None:
    """A flow calls the packages whose tables it writes; none of them may call a flow back
    (a package's flows would be spread over the packages again)."""
    _, graph = _real_graph()
    callers = {
        m
        for m, targets in graph.items()
        if package_of(m) != "backinstock.flows"
        and any(package_of(t) == "backinstock.flows" for t in targets)
    }
    assert callers and {floor_name(m) for m in callers} <= {"process", "web"}, callers


def test_nothing_below_the_processes_imports_the_worker() -> None:
    """Routers enqueue by task name (backinstock.tasks); importing the app builds no broker
    (tests/test_tasks.py)."""
    _, graph = _real_graph()
    importers = {m for m, targets in graph.items() if "backinstock.worker" in targets}
    assert {floor_name(m) for m in importers} <= {"entry", "process"}, importers


# The checker itself, on graphs made up to break each rule.

_CLEAN = {
    "backinstock.main": {"backinstock.shop.router"},
    "backinstock.shop.router": {"backinstock.deps", "backinstock.shop.service"},
    "backinstock.deps": {"backinstock.runtime"},
    "backinstock.shop.service": {"backinstock.shop.models", "backinstock.stock.service"},
    "backinstock.stock.service": {"backinstock.stock.models", "backinstock.db"},
    "backinstock.shop.models": {"backinstock.db"},
    "backinstock.runtime": {"backinstock.config"},
}


def _with(extra: dict[str, set[str]]) -> dict[str, set[str]]:
    graph = {module: set(targets) for module, targets in _CLEAN.items()}
    for module, targets in extra.items():
        graph.setdefault(module, set()).update(targets)
    return graph


def test_a_clean_graph_passes() -> None:
    assert problems(_CLEAN) == []


def test_an_upward_import_fails() -> None:
    # A router importing the worker, and a model importing a service.
    found = problems(
        _with(
            {
                "backinstock.shop.router": {"backinstock.worker"},
                "backinstock.shop.models": {"backinstock.stock.service"},
            }
        )
    )
    assert found == [
        "upward: backinstock.shop.models (data) imports backinstock.stock.service (domain)",
        "upward: backinstock.shop.router (web) imports backinstock.worker (process)",
    ]


def test_a_loop_fails_even_on_one_floor() -> None:
    found = problems(_with({"backinstock.stock.service": {"backinstock.shop.service"}}))
    assert (
        "modules import one another: backinstock.shop.service, backinstock.stock.service" in found
    )


def test_a_loop_through_many_modules_fails() -> None:
    found = problems(
        _with(
            {
                "backinstock.db": {"backinstock.config"},
                "backinstock.config": {"backinstock.errors"},
                "backinstock.errors": {"backinstock.db"},
            }
        )
    )
    assert found == [
        "modules import one another: backinstock.config, backinstock.db, backinstock.errors"
    ]


def test_a_loop_between_packages_fails_though_modules_do_not_loop() -> None:
    # shop.service -> stock.service (above), and stock's follow-up planner -> shop's models.
    found = problems(_with({"backinstock.stock.planner": {"backinstock.shop.models"}}))
    assert found == [
        "packages import one another: backinstock.shop, backinstock.stock",
        "    backinstock.shop.service imports backinstock.stock.service",
        "    backinstock.stock.planner imports backinstock.shop.models",
    ]


def test_routers_may_import_across_packages() -> None:
    graph = _with({"backinstock.stock.router": {"backinstock.shop.service", "backinstock.deps"}})
    assert problems(graph) == []


def test_a_module_must_be_on_one_floor() -> None:
    floors = (Floor("a", ("backinstock.*.x",)), Floor("b", ("backinstock.p.*",)))
    with pytest.raises(ValueError, match="matches a and b equally"):
        floor_of("backinstock.p.x", floors)
    with pytest.raises(ValueError, match="on no floor"):
        floor_of("elsewhere.module", floors)
    assert floor_of("backinstock.q.x", floors) == 0
