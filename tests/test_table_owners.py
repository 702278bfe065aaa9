"""Every table has one owning package, and only that package writes it.

A write is an ``insert``/``update``/``delete`` statement (``db.insert_for`` too) naming the
table's model or ``__table__``, a row object made of the model (to be added to a session),
or a textual ``INSERT INTO``/``UPDATE``/``DELETE FROM`` of the table. Other packages change
a table through its owner's named operations (``subscriptions/lifecycle.py``,
``dispatch/notifications.py``, …); docs/architecture.md opens with the map. Reading is free.

A statement whose table cannot be told from the source (a variable holding some model)
fails too: a writer has to name what it writes. Assigning to a loaded row's attribute is a
write this scan cannot see; review keeps those in the owner as well.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import backinstock
from backinstock.models import Base

# Table -> the package that alone writes it.
OWNERS: Mapping[str, str] = {
    "api_keys": "backinstock.auth",
    "products": "backinstock.catalog",
    "product_substitutes": "backinstock.catalog",
    "product_names": "backinstock.catalog",
    "product_policies": "backinstock.catalog",
    "subscriptions": "backinstock.subscriptions",
    "subscription_fallbacks": "backinstock.subscriptions",
    "queue_counts": "backinstock.subscriptions",
    "restock_events": "backinstock.restocks",
    "stock_levels": "backinstock.restocks",
    "waves": "backinstock.restocks",
    "holds": "backinstock.restocks",
    "notifications": "backinstock.dispatch",
    "confirmations_sent": "backinstock.dispatch",
    "substitute_offers": "backinstock.dispatch",
    "dev_outbox": "backinstock.senders",
    "coupon_pools": "backinstock.coupons",
    "coupons": "backinstock.coupons",
    "orders": "backinstock.conversions",
    "conversions": "backinstock.conversions",
    "substitute_sales": "backinstock.conversions",
    "dashboard_sessions": "backinstock.dashboard",
}
# Tables the database alone writes, by triggers on their owner's other table (the
# migration that made them says which): no module may.
BY_TRIGGERS = {"queue_counts"}
# Modules that build a statement for a table their caller names (no table of their own).
GENERIC = {"backinstock.db"}

_STATEMENTS = {"insert": 0, "update": 0, "delete": 0, "insert_for": 1}
_TEXTUAL = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?(\w+)", re.IGNORECASE)
SRC = Path(backinstock.__file__).parent


@dataclass(frozen=True)
class Write:
    module: str
    line: int
    table: str | None  # None: the source does not say which


def model_tables() -> dict[str, str]:
    """Mapped class name -> its table."""
    return {m.class_.__name__: m.local_table.name for m in Base.registry.mappers}  # type: ignore[attr-defined]


def _names(tree: ast.Module, models: Mapping[str, str]) -> dict[str, str]:
    """Names in a module that stand for a table: imported models (under any alias) and
    module-level ``X = Model.__table__`` (or ``metadata.tables[…]``)."""
    names = {name: table for name, table in models.items()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in models:
                    names[alias.asname or alias.name] = models[alias.name]
    for node in tree.body:
        target, value = _assignment(node)
        if target is not None and value is not None:
            table = _table_of(value, names)
            if table is not None:
                names[target] = table
    return names


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return (target.id if isinstance(target, ast.Name) else None), node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def _table_of(node: ast.expr, names: Mapping[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr in ("__table__", "__tablename__"):
        return _table_of(node.value, names)
    if isinstance(node, ast.Subscript):  # metadata.tables[Model.__tablename__ or "name"]
        key = node.slice
        if isinstance(key, ast.Constant) and key.value in names.values():
            return str(key.value)
        return _table_of(key, names)
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            found.add(id(first.value))
    return found


def writes(module: str, source: str, models: Mapping[str, str]) -> Iterator[Write]:
    tree = ast.parse(source)
    names = _names(tree, models)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            func = node.func.id
            if func in _STATEMENTS and len(node.args) > _STATEMENTS[func]:
                table = _table_of(node.args[_STATEMENTS[func]], names)
                yield Write(module, node.lineno, table)
            elif func in names:  # a row object, to be added to a session
                yield Write(module, node.lineno, names[func])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            for match in _TEXTUAL.finditer(node.value):
                if match.group(1) in models.values():
                    yield Write(module, node.lineno, match.group(1))


def violations(
    module: str, source: str, models: Mapping[str, str], owners: Mapping[str, str] = OWNERS
) -> list[str]:
    found = []
    for write in sorted(writes(module, source, models), key=lambda w: w.line):
        if write.table is None:
            if module not in GENERIC:
                found.append(f"{module}:{write.line}: writes a table the source does not name")
            continue
        owner = owners.get(write.table)
        if owner is None:
            found.append(f"{module}:{write.line}: writes {write.table}, which has no owner")
        elif module != owner and not module.startswith(owner + "."):
            found.append(f"{module}:{write.line}: writes {write.table}, owned by {owner}")
    return found


def _modules() -> Iterator[tuple[str, str]]:
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield module, path.read_text()


def test_every_table_has_an_owner() -> None:
    assert set(OWNERS) == set(Base.metadata.tables)


def test_only_its_owner_writes_a_table() -> None:
    models = model_tables()
    found = [line for module, source in _modules() for line in violations(module, source, models)]
    assert not found, "\n".join(found)


def test_the_owners_do_write_their_tables() -> None:
    """The scan sees each owner's writes (a scan that saw none would pass anything), and
    none of a table the triggers keep."""
    models = model_tables()
    written = {
        write.table
        for module, source in _modules()
        for write in writes(module, source, models)
        if write.table is not None
    }
    assert written == set(OWNERS) - BY_TRIGGERS


# The scan itself, on code written to break the rule.

_PLANTED = '''
from sqlalchemy import delete, update
from backinstock.db import insert_for
from backinstock.subscriptions.models import Subscription as S
from backinstock.dispatch.models import Notification

_TABLE = Notification.__table__
_CORE = Base.metadata.tables["subscriptions"]
LATER = "UPDATE subscriptions SET status = 'waiting'"


async def sneak(session, model):
    """Nothing here, not even INSERT INTO notifications, is a write."""
    await session.execute(update(S).values(status="expired"))
    await session.execute(insert_for(session, Notification).values())
    await session.execute(update(_TABLE).values(status="sent"))
    await session.execute(update(_CORE).values(status="expired"))
    session.add(Notification(sku="x"))
    await session.execute(delete(model))
    values = {}
    values.update(status="ignored: a dict's update, not a statement")
'''


def test_a_write_outside_the_owner_fails() -> None:
    found = violations("backinstock.restocks.sneaky", _PLANTED, model_tables())
    assert found == [
        "backinstock.restocks.sneaky:9: writes subscriptions, owned by backinstock.subscriptions",
        "backinstock.restocks.sneaky:14: writes subscriptions, owned by backinstock.subscriptions",
        "backinstock.restocks.sneaky:15: writes notifications, owned by backinstock.dispatch",
        "backinstock.restocks.sneaky:16: writes notifications, owned by backinstock.dispatch",
        "backinstock.restocks.sneaky:17: writes subscriptions, owned by backinstock.subscriptions",
        "backinstock.restocks.sneaky:18: writes notifications, owned by backinstock.dispatch",
        "backinstock.restocks.sneaky:19: writes a table the source does not name",
    ]


def test_the_owner_may_write_and_a_table_without_owner_fails() -> None:
    models = model_tables()
    owned = "from backinstock.dispatch.models import Notification\nupdate(Notification)\n"
    assert violations("backinstock.dispatch.notifications", owned, models) == []
    assert violations("backinstock.dispatch", owned, models) == []
    orphan = {k: v for k, v in OWNERS.items() if k != "notifications"}
    assert violations("backinstock.dispatch.x", owned, models, orphan) == [
        "backinstock.dispatch.x:2: writes notifications, which has no owner"
    ]
