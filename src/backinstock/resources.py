"""Where the top-level ``alembic/`` and ``channels/`` folders are, installed or not."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    bundled = _PACKAGE / "_bundled" / name  # a wheel carries them inside the package
    if bundled.is_dir():
        return bundled
    checkout = _PACKAGE.parents[1] / name  # an editable install reads the repository's
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"{name}/ is neither bundled nor in the source tree")
