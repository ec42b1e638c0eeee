"""Fixtures of the accounts tests: direct database access and the shared server's keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from api.core.db import Database
from api.core.security import Keys, derive_keys
from api.core.settings import Settings
from tests.support import RunningServer
from tests.users.helpers import AnnouncingDatabase


@pytest.fixture(scope="session")
async def db(database_url: str, server: RunningServer) -> AsyncIterator[Database]:
    """The run's database, opened by the test itself to read and change rows directly; session
    changes made through it are announced to the shared server."""
    database = AnnouncingDatabase(
        database_url, sessions=server.app.state.chat.sessions, pool_size=2
    )
    yield database
    await database.dispose()


@pytest.fixture(scope="session")
def keys(settings: Settings) -> Keys:
    """The keys the shared server derives from its secret."""
    return derive_keys(settings.secret)
