"""The only module that builds database engines and sessions, and runs migrations."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.pgproto.pgproto import UUID as _DriverUUID
from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

from api.core.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# Stable constraint names, so alembic can alter tables on SQLite (batch mode) and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION
metadata: MetaData = SQLModel.metadata

_IMMEDIATE = "chat_sqlite_immediate"

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC, also on SQLite (which stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_uuid(text: str) -> uuid.UUID:
    """A UUID from a client's text (ValueError when it is none), in the type asyncpg gives the
    database's UUIDs: a uuid.UUID in C, equal and hashing alike, whose str() and hash() cost a
    tenth of the standard class's pure-Python ones (an id is formatted several times per send:
    channel names, cursors, results). Spellings only the standard parser takes ({...},
    urn:uuid:) go through it."""
    try:
        value: uuid.UUID = _DriverUUID(text)
    except ValueError:
        return uuid.UUID(text)
    return value


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer;
        # busy_timeout turns lock contention into a wait instead of "database is locked".
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A writing transaction takes the write lock up front (BEGIN IMMEDIATE): a deferred one
        # that later writes fails with "database is locked" instead of waiting its turn.
        immediate = connection.get_execution_options().get(_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def is_sqlite(url: str) -> bool:
    """True for the embedded SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Build the async engine for a database URL (SQLite file or PostgreSQL)."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"isolation_level": None})
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (a round trip on every checkout, a third of a short request's CPU): a
        # connection found dead fails that one operation (SERVICE_UNAVAILABLE) and SQLAlchemy
        # then invalidates the whole pool, so the next operation gets fresh connections.
        pool_recycle=1800,
        pool_timeout=5,
        # Fail fast while the server is unreachable instead of hanging a request.
        connect_args={"timeout": 5, "command_timeout": 30},
    )


# What asyncpg raises when the server cannot be reached or the connection broke; constraint
# violations and other statement errors are not among them and pass through.
_PG_UNREACHABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


_UNREACHABLE = (
    TimeoutError,
    SQLAlchemyTimeoutError,  # no pooled connection free in time: overloaded, retry
    OperationalError,
    OSError,
    ConnectionError,
    *_PG_UNREACHABLE,
)


def _unavailable(error: Exception) -> ServiceUnavailable | None:
    """SERVICE_UNAVAILABLE for an error that says the database cannot be reached, else None."""
    if isinstance(error, _UNREACHABLE):
        log.warning("database unavailable: %s", error)
        return ServiceUnavailable()
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        log.warning("database connection lost: %s", error)
        return ServiceUnavailable()
    return None


@contextmanager
def unavailable_when_unreachable() -> Iterator[None]:
    """Turn "cannot reach the database" into SERVICE_UNAVAILABLE; other errors pass."""
    try:
        yield
    except Exception as error:
        unavailable = _unavailable(error)
        if unavailable is None:
            raise
        raise unavailable from error


class PgPool:
    """asyncpg connections for the statements on hot paths (PostgreSQL only).

    SQLAlchemy's async engine costs hundreds of microseconds per statement in compilation,
    greenlet switches and result wrapping; asyncpg prepares each distinct statement once per
    connection (its statement cache) and returns plain records. asyncpg's own Pool then adds
    about 70 us per statement (measured: SELECT 1 at 38-48 us of CPU on a connection, 110-120 us
    through the pool): a task per release, a wait_for per acquire with a timeout, and a reset
    round trip. This pool only hands connections out and takes them back: no task, no reset
    (nothing here sets session state), and a connection that failed or was cancelled mid-
    statement is closed instead of reused. Every call maps an unreachable server to
    SERVICE_UNAVAILABLE, like the engine's sessions.
    """

    def __init__(
        self, url: str, *, size: int, acquire_timeout: float = 5.0, connect_timeout: float = 5.0
    ) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._size = size
        self._acquire_timeout = acquire_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[asyncpg.Connection] = []
        self._waiters: deque[asyncio.Future[asyncpg.Connection | None]] = deque()
        self._opened = 0  # connections open, or being opened
        self._closed = False
        # Plain counts for /metrics: times a caller waited for a connection, and errors by
        # kind ("statement": the server refused it; "connection": broken or unreachable).
        self.waits = 0
        self.errors: collections.Counter[str] = collections.Counter()
        # Statement observers (tests that check which SQL a request runs).
        self.observers: list[Callable[[str, tuple[Any, ...]], None]] = []

    async def _acquire(self) -> asyncpg.Connection:
        while True:
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._opened -= 1
            if self._closed:
                raise ServiceUnavailable()
            if self._opened < self._size:
                self._opened += 1
                try:
                    connection = await asyncpg.connect(
                        self._dsn, timeout=self._connect_timeout, command_timeout=30
                    )
                except BaseException:
                    self._opened -= 1
                    self._wake()
                    raise
                return connection
            waiter: asyncio.Future[asyncpg.Connection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            self.waits += 1
            try:
                async with asyncio.timeout(self._acquire_timeout):
                    handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    # Handed a connection just as we gave up: pass it on.
                    self._release(waiter.result())
                waiter.cancel()
                raise
            if handed is not None:
                return handed
            # A slot freed up (a connection was dropped): try again to open one.

    def _wake(self) -> None:
        """Tell the next waiter that a slot is free (it opens a connection itself)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: asyncpg.Connection) -> None:
        if self._closed or connection.is_closed() or connection.is_in_transaction():
            self._drop(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _drop(self, connection: asyncpg.Connection) -> None:
        connection.terminate()
        self._opened -= 1
        self._wake()

    @property
    def in_use(self) -> int:
        """Connections lent out (or being opened)."""
        return self._opened - len(self._idle)

    def _after_error(self, connection: asyncpg.Connection, error: BaseException) -> None:
        if isinstance(error, asyncpg.PostgresError) and not isinstance(error, _PG_UNREACHABLE):
            # A statement error (a constraint, say): the connection is fine.
            self.errors["statement"] += 1
            self._release(connection)
            return
        if not isinstance(error, asyncio.CancelledError):
            self.errors["connection"] += 1
        # Cancelled mid-statement, or the connection broke: never reuse it. A broken one says
        # the server went away (restart, failover): the idle ones are most likely dead too.
        self._drop(connection)
        if isinstance(error, (OSError, *_PG_UNREACHABLE)):
            while self._idle:
                self._drop(self._idle.pop())

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own, for several statements in a row or a transaction."""
        with unavailable_when_unreachable():
            connection = await self._acquire()
            try:
                yield connection
            except BaseException as error:
                self._after_error(connection, error)
                raise
            self._release(connection)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        if self.observers:
            for observer in self.observers:
                observer(sql, args)
        # unavailable_when_unreachable() inlined, and an idle connection taken without the
        # _acquire coroutine: this runs for every hot statement.
        try:
            connection = self._idle.pop() if self._idle else None
            if connection is None or connection.is_closed():
                if connection is not None:
                    self._opened -= 1
                connection = await self._acquire()
            try:
                result = await getattr(connection, method)(sql, *args)
            except BaseException as error:
                self._after_error(connection, error)
                raise
            self._release(connection)
            return result
        except Exception as error:
            unavailable = _unavailable(error)
            if unavailable is None:
                raise
            raise unavailable from error

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One row (or None) of one autocommitted statement."""
        row: asyncpg.Record | None = await self._run("fetchrow", sql, args)
        return row

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Every row of one autocommitted statement."""
        rows: list[asyncpg.Record] = await self._run("fetch", sql, args)
        return rows

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one autocommitted statement; its status tag (e.g. "UPDATE 1")."""
        status: str = await self._run("execute", sql, args)
        return status

    async def close(self) -> None:
        """Close every connection (those lent out are closed when they come back)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._opened -= 1
            try:
                await asyncio.wait_for(connection.close(), 2)
            except (TimeoutError, OSError, *_PG_UNREACHABLE):
                connection.terminate()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ServiceUnavailable())
        self._waiters.clear()


class Database:
    """The engines of one running app: SQLAlchemy's (every statement on SQLite, the cold ones
    on PostgreSQL) and, on PostgreSQL, asyncpg's pool for the hot ones (`pg`)."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self.pool_size = pool_size
        # On PostgreSQL the hot paths use `pg`; SQLAlchemy's pool serves the rest and needs
        # fewer connections.
        self.engine = create_engine(url, pool_size=max(2, pool_size // 2))
        self.pg: PgPool | None = None
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Single-statement reads need no transaction: autocommit saves BEGIN and ROLLBACK.
        self._reader = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # Errors raised by the driver under SQLAlchemy, by kind (as PgPool.errors), for /metrics.
        self.errors: collections.Counter[str] = collections.Counter()
        event.listen(self.engine.sync_engine, "handle_error", self._count_error)
        # SQLite has one writer at a time and its busy handler waits by sleeping (up to 100 ms
        # a turn), so in-process writers queue here instead, in order and without sleeping.
        self._sqlite_write_lock = asyncio.Lock()

    def _count_error(self, context: ExceptionContext) -> None:
        self.errors["connection" if context.is_disconnect else "statement"] += 1

    async def start(self) -> None:
        """Make the asyncpg pool on PostgreSQL (called by the app's lifespan); it connects on
        first use, so a server that is down at start-up only fails the requests made while it
        is down."""
        if not self.is_sqlite and self.pg is None:
            self.pg = PgPool(self.url, size=self.pool_size)

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error.

        `write=True` on SQLite takes the write lock when the transaction begins.
        """
        with unavailable_when_unreachable():
            if write and self.is_sqlite:
                async with (
                    self._sqlite_write_lock,
                    self._sessions() as session,
                    session.begin(),
                ):
                    await session.connection(execution_options={_IMMEDIATE: True})
                    yield session
                return
            async with self._sessions() as session, session.begin():
                yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for Core reads: no ORM session, no identity map."""
        with unavailable_when_unreachable():
            async with self._reader.connect() as connection:
                yield connection

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in one transaction (on SQLite: the write lock, BEGIN IMMEDIATE)."""
        with unavailable_when_unreachable():
            if self.is_sqlite:
                async with self._sqlite_write_lock, self.engine.connect() as plain:
                    connection = await plain.execution_options(**{_IMMEDIATE: True})
                    async with connection.begin():
                        yield connection
                return
            async with self.engine.begin() as connection:
                yield connection

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            async with asyncio.timeout(3), self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as error:  # noqa: BLE001 - any failure means unhealthy
            log.warning("database health check failed: %s", error)
            return False
        return True

    async def dispose(self) -> None:
        """Close every pooled connection."""
        if self.pg is not None:
            await self.pg.close()
            self.pg = None
        await self.engine.dispose()


def alembic_config(url: str) -> Any:
    """An alembic Config pointing at our migrations and the given database."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates %, which URL-encoded passwords contain.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str) -> None:
    """Apply every pending migration (alembic upgrade head); blocking, call from a thread."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


async def migrate(url: str) -> None:
    """Apply pending migrations without blocking the event loop."""
    await asyncio.to_thread(upgrade_database, url)
