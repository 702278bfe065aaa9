"""The README's settings tables are whole and list exactly the settings the code reads, each
with its real default."""

from __future__ import annotations

import enum
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from backinstock import config

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| setting | default | meaning |"


def _code_settings() -> dict[str, Any]:
    """Every field of every settings class in config.py, by its README name."""
    classes = [
        cls
        for _, cls in inspect.getmembers(config, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls.__module__ == config.__name__
    ]
    bundled = {field.type for field in config.Settings.__dataclass_fields__.values()}
    # every section with fields is one Settings bundles (so the service reads it)
    assert {c.__name__ for c in classes if c.model_fields} == set(bundled)
    found: dict[str, Any] = {}
    for cls in classes:
        for name, field in cls.model_fields.items():
            assert name.upper() not in found, name
            found[name.upper()] = field.get_default(call_default_factory=True)
    return found


def _settings_section() -> list[str]:
    text = README.read_text()
    start = text.index("### Settings\n")
    end = text.index("\n### ", start + 1)
    return text[start:end].splitlines()


def _tables() -> list[list[list[str]]]:
    """Each table of the section as its rows of cells; asserts that every table is whole."""
    lines = _settings_section()
    tables: list[list[list[str]]] = []
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        if line == HEADER:
            assert lines[i + 1] == "|---|---|---|", f"table without separator at {line!r}"
            tables.append([])
            continue
        if line == "|---|---|---|":
            continue
        # a row: it continues the table just above it, with no blank line in between
        assert tables and lines[i - 1].startswith("|"), f"row outside a table: {line!r}"
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 3, f"row without three cells: {line!r}"
        tables[-1].append(cells)
    return tables


def _documented() -> dict[str, str]:
    documented: dict[str, str] = {}
    for table in _tables():
        for name_cell, default_cell, _meaning in table:
            names = re.findall(r"`([A-Z][A-Z0-9_]*)`", name_cell)
            assert names, f"row names no setting: {name_cell!r}"
            for name in names:
                assert name not in documented, f"{name} is listed twice"
                documented[name] = default_cell
    return documented


def test_every_table_is_whole() -> None:
    tables = _tables()
    assert tables and all(tables)
    assert "product specification" not in "\n".join(_settings_section())


def test_every_setting_the_code_reads_is_documented() -> None:
    missing = sorted(set(_code_settings()) - set(_documented()))
    assert not missing, f"settings missing from the README: {missing}"


def test_the_readme_lists_no_setting_the_code_does_not_read() -> None:
    unknown = sorted(set(_documented()) - set(_code_settings()))
    assert not unknown, f"README settings the code does not read: {unknown}"


def _expected_default(value: Any) -> str | float | None:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return float(value)
    if value in ("", [], {}):
        return "empty"
    if isinstance(value, str):
        return value
    return None


@pytest.mark.parametrize("name", sorted(_code_settings()))
def test_documented_default_is_the_code_default(name: str) -> None:
    code_default = _code_settings()[name]
    cell = _documented().get(name)
    if cell is None:
        pytest.fail(f"{name} is not documented")
    expected = _expected_default(code_default)
    if name in ("ENCRYPTION_KEYS", "BLIND_INDEX_KEY", "TOKEN_KEY"):
        assert "generated" in cell  # empty in the code: generated in embedded mode
    elif expected == "empty":
        assert cell.startswith("empty"), (name, cell)
    elif isinstance(expected, float):
        first = re.search(r"`([^`]*)`", cell)
        assert first and float(first.group(1)) == expected, (name, cell)
    else:
        assert expected is not None
        first = re.search(r"`([^`]*)`", cell)
        assert first and first.group(1) == expected, (name, cell)
