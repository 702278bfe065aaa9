"""Test fixtures: the same suite runs on SQLite with the in-process broker (default) and on
PostgreSQL + Redis (``BACKINSTOCK_TEST_BACKEND=postgres``), always through the Alembic
migrations and real connections."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from backinstock import db, migrations
from backinstock.auth import service as auth
from backinstock.auth.service import Scope
from backinstock.catalog.service import ProductCache
from backinstock.config import Settings
from backinstock.crypto import new_key_spec
from backinstock.models import Base
from backinstock.ops.logging import configure_logging
from backinstock.ratelimit import local_limiter
from backinstock.runtime import Runtime
from backinstock.stats.pipeline import PipelineCache
from backinstock.subscriptions.models import QUEUED
from tests import apps
from tests.clock import SteppingClock
from tests.schedule import pytest_collection_modifyitems  # noqa: F401 - the suite's order
from tests.server import RedisServer

BACKEND = os.environ.get("BACKINSTOCK_TEST_BACKEND", "sqlite")
PG_ADMIN_URL = os.environ.get("BACKINSTOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# Under pytest-xdist (``-n 2``) each worker process gets its own database and Redis database:
# the given name with the worker's suffix, the given Redis database number minus its index
# (counting down: the default, 15, is the last of Redis' 16 databases).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … or none


def _per_worker_database(name: str) -> str:
    return f"{name}_{XDIST_WORKER}" if XDIST_WORKER else name


def _per_worker_redis(url: str) -> str:
    if not XDIST_WORKER:
        return url
    base, _, number = url.rpartition("/")
    index = int(number or 0) - int(XDIST_WORKER.removeprefix("gw"))
    if index < 0:
        raise RuntimeError(
            f"BACKINSTOCK_TEST_REDIS {url}: no Redis database left for {XDIST_WORKER}"
        )
    return f"{base}/{index}"


PG_DATABASE = _per_worker_database(
    os.environ.get("BACKINSTOCK_TEST_PG_DATABASE", "backinstock_test")
)
REDIS_URL = _per_worker_redis(os.environ.get("BACKINSTOCK_TEST_REDIS", "redis://127.0.0.1:6379/15"))
_WORKDIR = Path(tempfile.mkdtemp(prefix="backinstock-tests-"))


def _database_url() -> str:
    if BACKEND == "postgres":
        return f"{PG_ADMIN_URL.replace('postgresql://', 'postgresql+asyncpg://')}/{PG_DATABASE}"
    return f"sqlite+aiosqlite:///{_WORKDIR / 'test.db'}"


def _configure_environment() -> None:
    os.environ.update(
        {
            "BACKINSTOCK_DATABASE_URL": _database_url(),
            "BACKINSTOCK_REDIS_URL": REDIS_URL if BACKEND == "postgres" else "",
            "BACKINSTOCK_ENCRYPTION_KEYS": new_key_spec("t1"),
            "BACKINSTOCK_BLIND_INDEX_KEY": new_key_spec("t1"),
            "BACKINSTOCK_TOKEN_KEY": new_key_spec("t1"),
            "BACKINSTOCK_ALLOWED_LINK_HOSTS": "shop.example,.example.com",
            "BACKINSTOCK_KEY_FILE": str(_WORKDIR / "keys.json"),
            "BACKINSTOCK_LOG_JSON": "true",
            # Quiet hours depend on the wall clock; tests about them turn them on.
            "BACKINSTOCK_QUIET_HOURS": "",
        }
    )


_configure_environment()
configure_logging("WARNING", json=False)


def _recreate_postgres_database() -> None:
    engine = create_sync_engine(
        f"{PG_ADMIN_URL.replace('postgresql://', 'postgresql+psycopg2://')}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {PG_DATABASE}"))
    engine.dispose()


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> str:
    if BACKEND == "postgres":
        _recreate_postgres_database()
    migrations.upgrade(settings.core.database_url)
    return settings.core.database_url


@pytest.fixture(scope="session")
async def runtime(settings: Settings, migrated: str) -> AsyncIterator[Runtime]:
    rt = Runtime.create(settings)
    yield rt
    await rt.close()


_TABLES = [t.name for t in reversed(Base.metadata.sorted_tables)]  # referencing ones first
# Which tables hold a row, in one round trip: most tests write to a few of them, and
# emptying one that is empty costs as much as emptying a full one (on PostgreSQL a TRUNCATE
# of every table took ~60 ms a test; deleting from the filled ones takes ~1 ms).
_FILLED = " UNION ALL ".join(
    f"SELECT '{table}' WHERE EXISTS (SELECT 1 FROM {table})" for table in _TABLES
)


@pytest.fixture(autouse=True)
async def clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test starts from empty tables and an empty Redis database."""
    if "runtime" not in request.fixturenames:
        yield
        return
    rt: Runtime = request.getfixturevalue("runtime")
    async with rt.engine.begin() as connection:
        filled = {name for (name,) in await connection.execute(text(_FILLED))}
        for table in _TABLES:  # referencing tables before the ones they reference
            if table in filled:
                await connection.execute(text(f"DELETE FROM {table}"))
    if rt.redis is not None:
        await rt.redis.flushdb()
    else:
        rt.limiter = local_limiter()
    rt.products = ProductCache()
    rt.pipeline = PipelineCache()
    rt.clock = SteppingClock()
    yield
    await assert_queue_counts_hold(rt)


# Whatever a test did to subscriptions, the triggers' counts beside the queue still match
# the queue (subscriptions.models.QueueCount): every path that moves a shopper, checked.
# One round trip: each count less its queued rows, where that is not 0.
_QUEUE_COUNT_DRIFT = text(
    "SELECT sku, priority_rank, sum(n) FROM ("
    "SELECT sku, priority_rank, waiting AS n FROM queue_counts UNION ALL "
    f"SELECT sku, priority_rank, -1 FROM subscriptions WHERE status IN ({QUEUED})"
    ") AS both_ways GROUP BY sku, priority_rank HAVING sum(n) <> 0"
)


async def assert_queue_counts_hold(rt: Runtime) -> None:
    async with rt.engine.connect() as connection:
        drift = (await connection.execute(_QUEUE_COUNT_DRIFT)).all()
    assert not drift, f"queue_counts less the queue, per (sku, rank): {drift}"


@pytest.fixture
def clock(runtime: Runtime) -> SteppingClock:
    """The test's clock: the runtime and the workers it starts read it; ``advance`` moves it."""
    assert isinstance(runtime.clock, SteppingClock)
    return runtime.clock


@pytest.fixture
async def session(runtime: Runtime) -> AsyncIterator[AsyncSession]:
    async with db.transaction(runtime.sessions) as s:
        yield s


WorkerStarter = Callable[..., Any]
# Dramatiq's worker timeout for the in-process workers: an idle thread looks again this
# often, so a stop takes two of these (worker threads, then consumers) rather than 2 x 100 ms
# after every test that started a worker, and Redis' idle consumers pick up a message this
# soon rather than up to 100 ms later. Nothing waits on it: tests join the broker.
WORKER_POLL_MS = 10


@pytest.fixture
def start_worker(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerStarter]:
    """Start in-process Dramatiq workers on the suite's broker, on the test's clock; settings
    given as keyword arguments apply to them, e.g. batch_interval_seconds=600. The sweeper
    runs only when the test says so (:func:`tests.workers.tick`), unless ``sweep=True``."""
    from backinstock import worker as worker_module

    started: list[Any] = []

    def start(threads: int = 4, *, sweep: bool = False, **settings: Any) -> Any:
        for name, value in settings.items():
            monkeypatch.setenv(f"BACKINSTOCK_{name.upper()}", str(value))
        # Dramatiq's AsyncIO middleware keeps one event-loop thread per process: a second
        # running worker would replace it and leave the first one's loop (and sweeper) behind.
        from dramatiq.asyncio import get_event_loop_thread

        assert get_event_loop_thread() is None, "stop the running worker first"
        worker = worker_module.start_embedded_worker(
            threads, clock=runtime.clock, sweep=sweep, poll_ms=WORKER_POLL_MS
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    worker_module.broker.flush_all()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to stop and start: outages never touch the shared one."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def make_client(runtime: Runtime) -> AsyncIterator[ClientFactory]:
    """Clients for the app; pass settings sections to override, e.g. rate_limits=..."""
    clients: list[httpx.AsyncClient] = []

    def factory(**sections: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=apps.app_for(runtime, **sections), client=("198.51.100.7", 40000)
            ),
            base_url="http://testserver",
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client: ClientFactory) -> httpx.AsyncClient:
    return make_client()


@pytest.fixture
async def api_keys(runtime: Runtime) -> dict[str, str]:
    """One key per scope, plus 'all' with every scope."""
    async with db.transaction(runtime.sessions) as s:
        keys = {
            scope.value: await auth.create_key(s, f"k-{scope.value}", [scope]) for scope in Scope
        }
        keys["all"] = await auth.create_key(s, "k-all", list(Scope))
    return keys
