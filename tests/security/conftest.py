"""Helpers of the security tests: servers with one policy switched on, and a liveness check."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import make_settings
from tests.support import ME, RunningServer, running_server


@contextlib.asynccontextmanager
async def policy_server(
    database_url: str, broadcast_url: str, data_dir: Path, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """A dedicated real server on the run's database with some settings changed."""
    settings = make_settings(database_url, broadcast_url, data_dir, **overrides)
    async with running_server(settings, run_migrations=False) as server:
        yield server


async def assert_still_serving(server: RunningServer, **client_options: Any) -> None:
    """After an attack, the server still answers a normal query (as an anonymous caller)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30, **client_options) as http:
        response = await http.post("/graphql", json={"query": ME})
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.json() == {"data": {"me": None}}


def private_rate(count: int) -> str:
    """A rate of `count` per a random long window, e.g. "3/1234s".

    With Redis, counters are shared by every server of the run (and by any other run on the same
    Redis) and keyed by limit name, key, count and period: a period nobody else uses keeps a
    test's per-address counts (all from 127.0.0.1) its own.
    """
    return f"{count}/{random.randint(600, 3600)}s"
