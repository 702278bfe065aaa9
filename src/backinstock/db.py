"""Engine, sessions and the declarative base shared by every domain's models.

The session dependency commits when the request succeeds and rolls back when it fails;
callbacks registered with :func:`after_commit` (broker wake-ups) run only after a commit.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Interval,
    MetaData,
    String,
    Uuid,
    any_,
    bindparam,
    column,
    event,
    false,
    func,
    literal,
    select,
    text,
    true,
    type_coerce,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnElement, Grouping
from sqlalchemy.sql.selectable import NamedFromClause, Select, TextualSelect
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

_T = TypeVar("_T")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def partial_index(name: str, *columns: str, where: str, unique: bool = False) -> Index:
    """An index of only the rows meeting ``where`` (SQL text), on both databases."""
    return Index(
        name,
        *columns,
        unique=unique,
        postgresql_where=text(where),
        sqlite_where=text(where),
    )


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Money(TypeDecorator[Decimal]):
    """An exact amount, stored as an integer of ten-thousandths on every backend.

    SQLite has no exact decimal type; scaled integers keep sums exact in the database on
    both backends (``SUM`` over a Money column comes back as a Money, so as a Decimal).
    """

    impl = BigInteger
    cache_ok = True
    SCALE = 4

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        scaled = Decimal(value).scaleb(self.SCALE)
        if scaled != scaled.to_integral_value():
            raise ValueError("amount has more than four decimal places")
        return int(scaled)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(int(value)).scaleb(-self.SCALE)


def utcnow() -> datetime:
    return datetime.now(UTC)


_last_id = 0
_id_lock = threading.Lock()


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): time-ordered, so primary-key inserts append to the index, and
    monotonic within this process (a counter step when the clock has not moved), so rows
    created in a loop sort in creation order."""
    global _last_id
    value = _v7(_stamp(), int.from_bytes(secrets.token_bytes(10), "big"))
    with _id_lock:
        if value <= _last_id:
            value = _last_id + 1  # stays a valid v7 until 2^62 steps within one millisecond
        _last_id = value
    return uuid.UUID(int=value)


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` ids as :func:`new_id` makes them, in creation order, from one draw of the
    system's randomness (a system call each: for a wave's chunk, one instead of one an id)."""
    global _last_id
    stamp = _stamp()
    entropy = secrets.token_bytes(10 * count)
    values = [
        _v7(stamp, int.from_bytes(entropy[i : i + 10], "big")) for i in range(0, 10 * count, 10)
    ]
    with _id_lock:
        last = _last_id
        for n, value in enumerate(values):
            last = values[n] = value if value > last else last + 1
        _last_id = last
    return [uuid.UUID(int=value) for value in values]


def _stamp() -> int:
    """The time field of a UUIDv7 made now (milliseconds), with its version and variant."""
    millis = time.time_ns() // 1_000_000
    return (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | 0b10 << 62


def _v7(stamp: int, rand: int) -> int:
    """A UUIDv7's value from its stamp and 80 random bits (rand_a, rand_b)."""
    return stamp | ((rand >> 62) & 0xFFF) << 64 | rand & ((1 << 62) - 1)


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """The engine for ``url``. Statement parameters are hidden from SQLAlchemy's logging and
    from its exceptions' messages: they hold what clients sent.

    On PostgreSQL the pool opens connections as they are needed, up to ``pool_size``, and
    keeps them; a transaction that finds them all in use waits for one. There is no
    overflow: a connection opened beyond the pool is closed as soon as it is given back, and
    under load (a busy API process holds more connections at once, each a little longer)
    the next request opens another. Measured on subscribe (bench/RESULTS.md): with 10 kept
    and 10 overflow, about a third of the CPU went to opening connections."""
    if url.startswith("sqlite"):
        return _create_sqlite_engine(url)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,
    )
    _ping_when_idle(engine)
    return engine


# A pooled connection idle for longer than this is pinged before use.
IDLE_BEFORE_PING_SECONDS = 1.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it has been idle a while.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout, and with asyncpg a ping is
    three round trips (BEGIN, an empty query, ROLLBACK): more than a subscribe's own
    statements. A connection given back less than IDLE_BEFORE_PING_SECONDS ago was working
    then; one that has waited longer (the database may have restarted or dropped it) is
    pinged, and a failed ping makes the pool connect afresh, as pre-ping would. A database
    that dies within that second fails the statements in flight either way, and SQLAlchemy
    then drops every pooled connection (its disconnect handling), so at most the requests
    already under way see the error."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _given_back(_: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _taken(dbapi_connection: Any, record: Any, _: Any) -> None:
        since = record.info.get(_IDLE_SINCE)  # none: a connection just made
        if since is None or time.monotonic() - since < IDLE_BEFORE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError() from exc  # the pool connects afresh


_IDLE_SINCE = "backinstock.idle_since"


def _create_sqlite_engine(url: str) -> AsyncEngine:
    # SQLite has one writer. One pooled connection per engine (an engine per event loop) makes
    # a process's transactions queue on the pool, which is cheap, rather than on SQLite's
    # busy timeout, which sleeps; BEGIN IMMEDIATE takes the write lock up front so that
    # engines in other loops or processes wait instead of failing on a lock upgrade.
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"timeout": 30},
        hide_parameters=True,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


_AFTER_COMMIT = "backinstock.after_commit"


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed; dropped on rollback."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


async def commit(session: AsyncSession) -> None:
    await session.commit()
    callbacks: list[Callable[[], None]] = session.info.pop(_AFTER_COMMIT, [])
    for callback in callbacks:
        callback()


async def rollback(session: AsyncSession) -> None:
    session.info.pop(_AFTER_COMMIT, None)
    await session.rollback()


@asynccontextmanager
async def transaction(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Yield a session; commit on success (then run after-commit callbacks), else roll back."""
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await rollback(session)
            raise
        await commit(session)


@asynccontextmanager
async def transaction_on_connection(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """:func:`transaction` for a hot path: a pooled connection, begun here, and a session
    that joins its transaction only if it is used. A request whose work is one
    :class:`DriverStatement` (a new subscription) never runs the ORM session's machinery
    (its begin, commit and close cost more CPU than the statement); any other statement on
    the session runs in the same transaction, committed or rolled back with it."""
    async with engine.connect() as connection:
        await connection.begin()
        session = AsyncSession(bind=connection, expire_on_commit=False, autoflush=False)
        try:
            try:
                yield session
                if session.in_transaction():
                    await session.flush()
            except BaseException:
                session.info.pop(_AFTER_COMMIT, None)
                await connection.rollback()
                raise
            await connection.commit()
        finally:
            if session.in_transaction():
                await session.close()  # lets go of the connection; never closes it
        for callback in session.info.pop(_AFTER_COMMIT, []):
            callback()


def hot_transaction(
    factory: async_sessionmaker[AsyncSession],
) -> AbstractAsyncContextManager[AsyncSession]:
    """:func:`transaction_on_connection` on the engine ``factory``'s sessions use: for a
    transaction of the wave's path whose statements are, as a rule, all
    :class:`DriverStatement`s (a claim; the outbox's write; the results of claims), where
    the session's begin, commit and close are most of the transaction's CPU outside the
    database. A statement through the session (a skip, a mark in flight) joins it."""
    engine: AsyncEngine = factory.kw["bind"]
    return transaction_on_connection(engine)


# What a DriverStatement runs: a query, or an INSERT, UPDATE or DELETE.
Statement = Select[Any] | TextualSelect | UpdateBase


class DriverStatement:
    """A Core statement built once (a textual one, a ``select``, or an ``insert`` or
    ``update``, with or without RETURNING) that, on PostgreSQL, is handed to the driver
    (asyncpg) itself, in the session's transaction: SQLAlchemy's execution (its context,
    cursor adapter, result objects and, for many rows, each row's parameters handled again)
    cost more CPU per call than the statements of the hot paths that use it (a new
    subscription; a claim's statements, ``docs/architecture.md``). The parameters go
    through their types' bind processors as SQLAlchemy's would, and each returned value
    through its column's result processor; elsewhere (SQLite) the session's connection
    executes the statement as usual, so both run the same statement and the same code
    around it."""

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    async def first(
        self, session: AsyncSession, params: Mapping[str, Any], *, alone: bool = False
    ) -> dict[str, Any] | None:
        """The first row, as a dict of its columns, or None. ``alone``: the caller will do
        nothing that must be undone with the statement, so on PostgreSQL, when the
        transaction has not started yet, the statement runs (and commits) on its own: one
        round trip instead of three; what the session does later is a transaction of its
        own, committed or rolled back as usual."""
        connection = await _connection_of(session)
        if connection.dialect.name != "postgresql":
            row = (await connection.execute(self.statement, params)).mappings().first()
            return None if row is None else dict(row)
        compiled = self._compiled_for(connection)
        record = await self._call(connection, "fetchrow", compiled.arguments(params), alone=alone)
        if record is None:
            return None
        return dict(zip(compiled.keys, compiled.row(record), strict=True))

    async def all(self, session: AsyncSession, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row the statement returns, as tuples in the order of its columns."""
        connection = await _connection_of(session)
        if connection.dialect.name != "postgresql":
            return [tuple(row) for row in await connection.execute(self.statement, params)]
        compiled = self._compiled_for(connection)
        records = await self._call(connection, "fetch", compiled.arguments(params))
        return [compiled.row(record) for record in records]

    async def execute(self, session: AsyncSession, params: Mapping[str, Any]) -> None:
        """The statement, for what it writes (it returns no rows)."""
        connection = await _connection_of(session)
        if connection.dialect.name != "postgresql":
            await connection.execute(self.statement, params)
            return
        await self._call(connection, "execute", self._compiled_for(connection).arguments(params))

    async def many(
        self, session: AsyncSession, rows: Sequence[Mapping[str, Any]], *, alone: bool = False
    ) -> None:
        """The statement once for each row of parameters (asyncpg's ``executemany``: one
        round trip), in the session's transaction. ``alone`` as for :meth:`first`: the
        rows are written all or none (asyncpg runs them in one implicit transaction) and
        committed at once, without the BEGIN and COMMIT round trips."""
        connection = await _connection_of(session)
        if connection.dialect.name != "postgresql":
            await connection.execute(self.statement, list(rows))
            return
        compiled = self._compiled_for(connection)
        arguments = [compiled.arguments(row) for row in rows]
        await self._call(connection, "executemany", [arguments], alone=alone)

    def _compiled_for(self, connection: AsyncConnection) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled(self.statement, connection.dialect)
        return self._compiled

    async def _call(
        self, connection: AsyncConnection, method: str, args: Sequence[Any], *, alone: bool = False
    ) -> Any:
        """asyncpg's ``method`` (fetchrow, fetch, execute, executemany) with the statement
        and ``args``, in the session's transaction unless ``alone``; its error raised as
        SQLAlchemy's (:func:`_on_driver`), the transaction's BEGIN's too: a connection the
        server has closed fails there first, and must be invalidated like any other."""
        sql = self._compiled_for(connection).sql

        async def run() -> Any:
            driver = await _driver_of(connection, in_transaction=not alone)
            return await getattr(driver, method)(sql, *args)

        return await _on_driver(connection, sql, run())


class _Compiled:
    """A statement as PostgreSQL's driver takes it: its text, how to make its positional
    arguments from named parameters, and how to read each returned column."""

    def __init__(self, statement: Statement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        names = list(dict.fromkeys(compiled.positiontup or ()))  # $n: the n-th name first seen
        # Values the statement carries itself (a status it sets), by name; a parameter the
        # caller must give and did not is a KeyError, as SQLAlchemy would refuse it.
        given = compiled.construct_params(_check=False)
        self._given = {n: given[n] for n in names if not compiled.binds[n].required}
        self._binds = [(n, compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect))
                       for n in names]  # fmt: skip
        columns = list(getattr(statement, "exported_columns", ()))
        self.keys = [c.key for c in columns]
        processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
        self._processed = [(i, f) for i, f in enumerate(processors) if f is not None]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values = [params[n] if n in params else self._given[n] for n, _ in self._binds]
        return [v if f is None else f(v) for v, (_, f) in zip(values, self._binds, strict=True)]

    def row(self, record: Any) -> tuple[Any, ...]:
        if not self._processed:
            return tuple(record)
        values = list(record)
        for i, process in self._processed:
            values[i] = process(values[i])
        return tuple(values)


async def _on_driver(connection: AsyncConnection, sql: str, call: Awaitable[_T]) -> _T:
    """``call``'s result; its error raised as SQLAlchemy raises a driver's errors (the
    adapter's DB-API error wrapped in ``sqlalchemy.exc.DBAPIError``: ``IntegrityError`` for
    a broken constraint; a lost connection invalidated), so that callers that catch
    SQLAlchemy's errors, and the pool, see it as they would any other statement's."""
    try:
        return await call
    except SQLAlchemyError:
        raise  # SQLAlchemy's own already (a connection it could not get back)
    except Exception as error:
        sync = connection.sync_connection
        if sync is None or sync.connection.dbapi_connection is None:
            raise
        try:
            sync.connection.dbapi_connection._handle_exception(error)
        except Exception as adapted:
            await greenlet_spawn(sync._handle_dbapi_exception, adapted, sql, None, None, None)
        raise


async def _connection_of(session: AsyncSession) -> AsyncConnection:
    bind = session.bind
    return bind if isinstance(bind, AsyncConnection) else await session.connection()


async def _driver_of(connection: AsyncConnection, *, in_transaction: bool) -> Any:
    """The asyncpg connection under ``connection``; ``in_transaction``: with the
    transaction SQLAlchemy's adapter would have begun at its first statement begun."""
    sync = connection.sync_connection
    # The checked-out connection as it is (no greenlet needed to read it), unless it was
    # invalidated, which takes a reconnect.
    raw = (
        sync.connection
        if sync is not None and not sync.invalidated and not sync.closed
        else await connection.get_raw_connection()
    )
    driver: Any = raw.driver_connection
    if in_transaction and not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN at its first statement, not at begin():
        # its own BEGIN, so that the connection's commit or rollback ends it.
        await raw.dbapi_connection._start_transaction()  # type: ignore[union-attr]
    return driver


def sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL, for creating its folder before first use."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return None if path in ("", ":memory:") else os.path.abspath(path)


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def insert_for(session: AsyncSession, table: Any) -> Any:
    """An INSERT that knows ON CONFLICT on both backends (their syntax is the same)."""
    return insert_of(dialect_name(session), table)


def insert_of(dialect: str, table: Any) -> Any:
    """:func:`insert_for` by the dialect's name, for a statement built once per dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def seconds_before(
    session: AsyncSession, moment: datetime, seconds: ColumnElement[int]
) -> ColumnElement[datetime]:
    """``moment`` less a whole number of seconds that each row says, in SQL: a set-based
    statement compares every row with its own delay (``sent_at <= seconds_before(…)``).

    SQLite keeps a UTC datetime as ``YYYY-MM-DD HH:MM:SS.ffffff`` text: whole seconds are
    taken from the first 19 characters by ``strftime``, and the fraction, which whole
    seconds leave as it is, is put back, so the text compares exactly with the column."""
    at = literal(moment, UTCDateTime)
    if dialect_name(session) == "postgresql":
        interval = func.make_interval(0, 0, 0, 0, 0, 0, seconds, type_=Interval())
        return type_coerce(at - interval, UTCDateTime)
    shifted = func.strftime("%Y-%m-%d %H:%M:%S", at, func.printf("-%d seconds", seconds))
    return type_coerce(shifted.op("||")(func.substr(at, 20)), UTCDateTime)


def nth_of(
    session: AsyncSession, values: list[uuid.UUID]
) -> Callable[[ColumnElement[int]], ColumnElement[uuid.UUID]]:
    """The n-th (1-based) of ``values`` in SQL, bound as one array: a set-based statement
    pairs rows with ids made here by position, without a parameter per id."""
    if dialect_name(session) == "postgresql":
        array = Grouping(literal(values, postgresql.ARRAY(Uuid)))  # ($1::UUID[])[n]
        return lambda n: array[n]
    # SQLite keeps UUIDs as 32 hex digits, the form a JSON array of .hex strings holds.
    document = literal(json.dumps([v.hex for v in values]))
    return lambda n: type_coerce(func.json_extract(document, func.printf("$[%d]", n - 1)), Uuid)


def numbered(session: AsyncSession, values: list[uuid.UUID]) -> NamedFromClause:
    """Ids as a table (id, n), n = 1.. in list order: one bound array, not a parameter each."""
    if dialect_name(session) == "postgresql":
        array = literal(values, postgresql.ARRAY(Uuid))
        return func.unnest(array).table_valued("id", with_ordinality="n").render_derived("numbered")
    # SQLite keeps UUIDs as 32 hex digits, the form json_each hands back.
    each = func.json_each(literal(json.dumps([v.hex for v in values]))).table_valued("key", "value")
    each = each.alias("each")
    return select(
        type_coerce(each.c.value, Uuid).label("id"), (each.c.key + 1).label("n")
    ).subquery("numbered")


def rows_table(dialect: str, name: str, **types: Any) -> NamedFromClause:
    """A table of rows bound at execution (``rows_params``): ``rows_table(d, "r", id=Uuid,
    rank=Integer)``.

    A set-based statement joins it (``UPDATE … FROM r``) with one bound array per column
    (PostgreSQL: ``unnest``) or one JSON document (SQLite: ``json_each``), so its text, and
    the plan PostgreSQL prepares for it, is the same however many rows it carries, unlike
    an ``IN`` list or an ``executemany`` that runs the statement once per row. Build the
    statement once and keep it: only the parameters change."""
    if dialect == "postgresql":
        arrays = [bindparam(f"{name}_{n}", type_=postgresql.ARRAY(t)) for n, t in types.items()]
        typed = [column(n, t) for n, t in types.items()]
        return func.unnest(*arrays).table_valued(*typed).render_derived(name)
    each = func.json_each(bindparam(name, type_=String)).table_valued("value").alias(f"{name}_")
    return select(
        *(
            type_coerce(func.json_extract(each.c.value, f"$[{i}]"), t).label(n)
            for i, (n, t) in enumerate(types.items())
        )
    ).subquery(name)


def among(session: AsyncSession, key: Any, ids: list[uuid.UUID]) -> Any:
    """``key IN ids`` bound as one array on PostgreSQL (``= ANY``: one statement text, and
    the key's index, whatever the length) and as one JSON document on SQLite."""
    if dialect_name(session) == "postgresql":
        return key == any_(literal(ids, postgresql.ARRAY(Uuid)))
    each = func.json_each(literal(json.dumps([v.hex for v in ids]))).table_valued("value")
    return key.in_(select(type_coerce(each.c.value, Uuid)))


def bound_among(dialect: str, key: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    """``key`` among the values bound as ``name`` at each execution, for a statement built
    once and kept: one array on PostgreSQL (``= ANY``: one text and one plan whatever the
    length), an expanding ``IN`` on SQLite."""
    if dialect == "postgresql":
        return key == any_(bindparam(name, type_=postgresql.ARRAY(key.type)))
    return key.in_(bindparam(name, expanding=True))


def one_of(session: AsyncSession, key: Any, values: Sequence[Any]) -> Any:
    """``key IN values`` for a column of any type: one bound array on PostgreSQL (``= ANY``:
    the statement's text, and so its compiled form, is the same for any number of values;
    an ``IN`` of a thousand is rendered anew each time), a plain ``IN`` on SQLite."""
    if dialect_name(session) == "postgresql":
        return key == any_(literal(list(values), postgresql.ARRAY(key.type)))
    return key.in_(list(values))


def in_rows(dialect: str, name: str, key: ColumnElement[Any], column: str = "id") -> Any:
    """``key`` is among the rows' ``column``: a join to ``rows_table`` is planned on that
    alone, and PostgreSQL, planning for the array it is given, may read the whole table
    to hash it. Stated as ``= ANY(array)`` too, the rows are found by the key's index."""
    if dialect == "postgresql":
        return key == any_(bindparam(f"{name}_{column}", type_=postgresql.ARRAY(key.type)))
    return true()


def unestimated(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """``condition`` in a form PostgreSQL cannot estimate from the statistics (it assumes
    half the rows pass), for a fence beside ``in_rows``.

    A claim's id is never in the statistics (it lives for seconds), nor, on statistics a
    wave outruns, are its rows' statuses; so ``claim_id = :claim`` was estimated at one of
    the batch's rows found by key. With one row on that side, PostgreSQL joined the batch
    to its ``rows_table`` by a nested loop that reads the whole array once for each row:
    200 x 200 rows compared, 8-10 ms for a result statement of 200 that takes 2.5 ms as a
    hash join (``tests/dispatch/test_claim_plan.py``)."""
    return func.coalesce(condition, false())


def rows_params(dialect: str, name: str, **columns: list[Any]) -> dict[str, Any]:
    """The parameters that fill ``rows_table(dialect, name, …)``: one list per column."""
    if dialect == "postgresql":
        return {f"{name}_{n}": values for n, values in columns.items()}
    rows = zip(*columns.values(), strict=True)
    return {name: json.dumps([[_json_value(v) for v in row] for row in rows])}


def _json_value(value: Any) -> Any:
    # SQLite keeps UUIDs as 32 hex digits (SQLAlchemy's non-native Uuid).
    return value.hex if isinstance(value, uuid.UUID) else value
