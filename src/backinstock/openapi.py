"""Render the app's OpenAPI document as YAML (``python -m backinstock.openapi``).

``openapi.yaml`` at the repository root is the published contract; a test compares it with
what the app generates, so the two cannot drift apart.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from backinstock.main import create_app


def document() -> dict[str, Any]:
    return create_app().openapi()


def render() -> str:
    text: str = yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)
    return text


if __name__ == "__main__":
    sys.stdout.write(render())
