"""Hostile, mistyped and unknown input at every endpoint: the clients these tests use are
not rate limited, so that hundreds of refused bodies are each answered for what they are."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from backinstock.runtime import Runtime
from tests.boundary import unlimited_client


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with unlimited_client(runtime) as c:
        yield c
