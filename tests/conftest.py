"""Fixtures: one database (SQLite file, or a fresh PostgreSQL database) and one server per run.

Point the suite at PostgreSQL and Redis with TEST_DATABASE_URL (any database on the server; a
fresh one is created and dropped) and TEST_BROADCAST_URL. Defaults: a SQLite file and memory://.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from api.core.db import upgrade_database
from api.core.settings import Settings
from tests.support import GraphQLClient, RunningServer, running_server

TEST_SECRET = "test-secret-" + "x" * 40
TEST_ITERATIONS = 1_000


def _postgres_dsn(url: str, database: str) -> str:
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database for this run only: a SQLite file, or a PostgreSQL database created and dropped."""
    base = os.environ.get("TEST_DATABASE_URL", "")
    if not base:
        path = tmp_path_factory.mktemp("db") / "chat.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade_database(url)
        yield url
        return
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    admin = _postgres_dsn(base, make_url(base).database or "postgres")

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def broadcast_url() -> str:
    return os.environ.get("TEST_BROADCAST_URL", "memory://")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def make_settings(
    database_url: str, broadcast_url: str, data_dir: Path, **overrides: object
) -> Settings:
    """Settings for a test server: low PBKDF2 cost, a fixed secret, the run's database."""
    values: dict[str, object] = {
        "database_url": database_url,
        "broadcast_url": broadcast_url,
        "secret_key": TEST_SECRET,
        "pbkdf2_iterations": TEST_ITERATIONS,
        "data_dir": data_dir,
        # Limits are off on the shared server (tests move many messages from one address);
        # the tests of each limit start a server with it on.
        "rate_limit_messages": "0",
        "rate_limit_sign_in": "0",
        "rate_limit_sign_in_per_address": "0",
        "rate_limit_sign_up_per_address": "0",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(database_url: str, broadcast_url: str, data_dir: Path) -> Settings:
    return make_settings(database_url, broadcast_url, data_dir)


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    """The real app under uvicorn, shared by the run's tests."""
    async with running_server(settings, run_migrations=False) as running:
        yield running


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[GraphQLClient]:
    """A fresh browser (its own cookie jar) against the shared server."""
    graphql = GraphQLClient(server.url)
    yield graphql
    await graphql.aclose()


@pytest.fixture
async def make_client(server: RunningServer) -> AsyncIterator[object]:
    """A factory of further browsers/devices against the shared server."""
    created: list[GraphQLClient] = []

    def make() -> GraphQLClient:
        graphql = GraphQLClient(server.url)
        created.append(graphql)
        return graphql

    yield make
    for graphql in created:
        await graphql.aclose()
