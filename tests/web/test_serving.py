"""Where the web client is served: on by default in development, off in production."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import make_settings
from tests.support import running_server


async def get(
    settings_overrides: dict[str, object], paths: list[str], **context: str
) -> list[httpx.Response]:
    settings = make_settings(
        context["database_url"],
        context["broadcast_url"],
        Path(context["data_dir"]),
        **settings_overrides,
    )
    async with (
        running_server(settings, run_migrations=False) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        return [await client.get(path) for path in paths]


async def test_development_serves_the_client_at_the_root(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    root, module = await get(
        {},
        ["/", "/web/js/app.js"],
        database_url=database_url,
        broadcast_url=broadcast_url,
        data_dir=str(data_dir),
    )
    assert root.status_code == 200
    assert "script-src 'self'" in root.headers["content-security-policy"]
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")


async def test_production_serves_no_client_unless_web_client_is_set(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    where = {
        "database_url": database_url,
        "broadcast_url": broadcast_url,
        "data_dir": str(data_dir),
    }
    root, module = await get({"environment": "production"}, ["/", "/web/js/app.js"], **where)
    assert root.status_code == 307
    assert root.headers["location"] == "/graphql"
    assert module.status_code == 404
    root, module = await get(
        {"environment": "production", "web_client": True}, ["/", "/web/js/app.js"], **where
    )
    assert root.status_code == 200
    assert module.status_code == 200
