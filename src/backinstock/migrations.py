"""Apply the Alembic migrations (PostgreSQL and SQLite alike)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from backinstock.db import sqlite_path
from backinstock.resources import resource_dir


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resource_dir("alembic")))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    path = sqlite_path(database_url)
    if path:
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)
