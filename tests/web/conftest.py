"""Browser tests of the web client: Playwright (Python) driving the system's Chromium.

No browser is downloaded: the tests use Debian's `chromium` (or the one CHROMIUM names). Without
it they skip and say how to run them; with WEB_CLIENT_TESTS=required (CI sets it) they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_ITERATIONS, TEST_SECRET
from tests.support import ServerProcess

HOW_TO_RUN = (
    "browser tests skipped: no Chromium found. Run them with `apt-get install -y chromium` "
    "(or CHROMIUM=/path/to/chromium), then `make test`."
)

# The flags a sandboxed, offline machine needs (the probe's), so Chromium itself calls nowhere.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
]


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("WEB_CLIENT_TESTS") == "required":
        pytest.fail(f"WEB_CLIENT_TESTS=required, but {reason}")
    pytest.skip(HOW_TO_RUN if "Chromium" in reason else reason)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the module."""
    path = chromium_path()
    if path is None:
        _unavailable("no Chromium found")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (make install)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
async def web_server(
    database_url: str, broadcast_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServerProcess]:
    """`chat-backend serve` as a real process (so a test can restart it), client on."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEST_")}
    data_dir: Path = tmp_path_factory.mktemp("web-data")
    env.update(
        DATABASE_URL=database_url,
        BROADCAST_URL=broadcast_url,
        SECRET_KEY=TEST_SECRET,
        PBKDF2_ITERATIONS=str(TEST_ITERATIONS),
        DATA_DIR=str(data_dir),
        WEB_CLIENT="true",
        RATE_LIMIT_MESSAGES="0",
        RATE_LIMIT_SIGN_IN="0",
        RATE_LIMIT_SIGN_IN_PER_ADDRESS="0",
        RATE_LIMIT_SIGN_UP_PER_ADDRESS="0",
    )
    server = ServerProcess(env)
    await server.start()
    yield server
    await server.stop()
