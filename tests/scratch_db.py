"""An empty database of a test's own, on the suite's backend, for migration tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from tests.conftest import BACKEND, PG_ADMIN_URL, PG_DATABASE


@contextmanager
def scratch_database(tmp_path: Path, suffix: str) -> Iterator[tuple[str, Engine]]:
    """(async URL for Alembic, sync engine for the test) of an empty database."""
    if BACKEND != "postgres":
        path = tmp_path / f"{suffix}.db"
        engine = create_engine(f"sqlite:///{path}")
        yield f"sqlite+aiosqlite:///{path}", engine
        engine.dispose()
        return
    name = f"{PG_DATABASE}_{suffix}"
    admin = create_engine(
        f"{PG_ADMIN_URL.replace('postgresql://', 'postgresql+psycopg2://')}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine = create_engine(
        f"{PG_ADMIN_URL.replace('postgresql://', 'postgresql+psycopg2://')}/{name}"
    )
    try:
        yield f"{PG_ADMIN_URL.replace('postgresql://', 'postgresql+asyncpg://')}/{name}", engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
