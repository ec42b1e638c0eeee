"""Database failures the client can only retry become SERVICE_UNAVAILABLE, never internal errors."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.core.db import Database
from api.core.errors import ServiceUnavailable


async def test_an_exhausted_connection_pool_is_service_unavailable(database_url: str) -> None:
    db = Database(database_url, pool_size=1)
    try:
        with pytest.raises(ServiceUnavailable):
            async with db.session():
                raise PoolTimeout("QueuePool limit of size 1 overflow 1 reached")
        with pytest.raises(ServiceUnavailable):
            async with db.read():
                raise PoolTimeout("QueuePool limit of size 1 overflow 1 reached")
    finally:
        await db.dispose()


async def test_other_database_errors_are_not_disguised_as_unavailability(database_url: str) -> None:
    db = Database(database_url)
    try:
        with pytest.raises(ZeroDivisionError):
            async with db.session():
                _ = 1 / 0
    finally:
        await db.dispose()
