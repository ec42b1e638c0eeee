"""The only module that builds database engines and sessions, and runs migrations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy.engine import Dialect, make_url
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


@contextmanager
def _unavailable_when_unreachable() -> Iterator[None]:
    """Turn "cannot reach the database" into SERVICE_UNAVAILABLE; other errors pass."""
    try:
        yield
    except (
        TimeoutError,
        SQLAlchemyTimeoutError,  # no pooled connection free in time: overloaded, retry
        OperationalError,
        OSError,
        ConnectionError,
    ) as error:
        log.warning("database unavailable: %s", error)
        raise ServiceUnavailable() from error
    except DBAPIError as error:
        if error.connection_invalidated:
            log.warning("database connection lost: %s", error)
            raise ServiceUnavailable() from error
        raise


class Database:
    """The engine and session factory of one running app."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size)
        self.is_sqlite = is_sqlite(url)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Single-statement reads need no transaction: autocommit saves BEGIN and ROLLBACK.
        self._reader = (
            self.engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # SQLite has one writer at a time and its busy handler waits by sleeping (up to 100 ms
        # a turn), so in-process writers queue here instead, in order and without sleeping.
        self._sqlite_write_lock = asyncio.Lock()

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on error.

        `write=True` on SQLite takes the write lock when the transaction begins.
        """
        with _unavailable_when_unreachable():
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
        """A plain connection for Core reads on hot paths: no ORM session, no identity map."""
        with _unavailable_when_unreachable():
            async with self._reader.connect() as connection:
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
