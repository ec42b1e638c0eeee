"""GET /healthz: 200 while the database answers, 503 when it does not."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_settings
from tests.support import GraphQLClient, running_server

# A PostgreSQL URL on a privileged port nothing listens on: every connection is refused.
UNREACHABLE_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:1/nothing"


async def test_healthz_answers_200_with_status_ok(client: GraphQLClient) -> None:
    response = await client.http.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok"}


async def test_healthz_answers_503_when_the_database_is_unreachable(
    broadcast_url: str, tmp_path: Path
) -> None:
    settings = make_settings(UNREACHABLE_DATABASE, broadcast_url, tmp_path)
    async with running_server(settings, run_migrations=False) as server:
        browser = GraphQLClient(server.url)
        try:
            response = await browser.http.get("/healthz")
        finally:
            await browser.aclose()
    assert response.status_code == 503
    assert response.json()["status"] != "ok"


async def test_responses_do_not_name_the_server_but_carry_a_date(client: GraphQLClient) -> None:
    for response in (
        await client.http.get("/healthz"),
        await client.http.post("/graphql", json={"query": "{ __typename }"}),
    ):
        assert "server" not in response.headers
        assert "date" in response.headers
