"""Production mode hides the schema and internals; development keeps its tools."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.users import service as users_service
from schema.errors import INTERNAL_MESSAGE
from tests.security.conftest import assert_still_serving, policy_server
from tests.support import PASSWORD, SIGN_UP, RunningServer, unique_name

SCHEMA_TYPES = "query { __schema { types { name } } }"
TYPE_FIELDS = 'query { __type(name: "User") { fields { name } } }'
TYPO = "query { mee { id } }"
ME_NAME = "query { me { name } }"
SESSIONS = "query { sessions { id current } }"


@pytest.fixture(scope="module")
async def production_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """ENVIRONMENT=production with SECRET_KEY set (make_settings sets one); all else default."""
    async with policy_server(
        database_url, broadcast_url, data_dir, environment="production"
    ) as server:
        assert server.settings.is_production
        yield server


@pytest.fixture
async def http(production_server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=production_server.url, timeout=30) as client:
        yield client


async def post(http: httpx.AsyncClient, query: str, **kwargs: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query}, **kwargs)
    assert response.status_code == 200, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return body


async def sign_up(http: httpx.AsyncClient) -> tuple[str, httpx.Response]:
    """Sign up a new user; its name and the raw response (with its Set-Cookie)."""
    name = unique_name("prod")
    response = await http.post(
        "/graphql", json={"query": SIGN_UP, "variables": {"name": name, "password": PASSWORD}}
    )
    assert response.status_code == 200
    assert not response.json().get("errors"), response.text
    return name, response


def session_value(response: httpx.Response) -> str:
    """The value of the __Host-session cookie a response sets."""
    for header in response.headers.get_list("set-cookie"):
        match = re.match(r"__Host-session=([^;]+)", header)
        if match:
            return match.group(1)
    raise AssertionError(response.headers.get_list("set-cookie"))


# --- Production -----------------------------------------------------------------------------


@pytest.mark.parametrize("document", [SCHEMA_TYPES, TYPE_FIELDS], ids=["__schema", "__type"])
async def test_introspection_is_off_in_production(
    production_server: RunningServer, http: httpx.AsyncClient, document: str
) -> None:
    body = await post(http, document)
    assert body["data"] is None
    assert body["errors"]
    for error in body["errors"]:
        assert "introspection has been disabled" in error["message"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "User" not in str(body)
    await assert_still_serving(production_server)


async def test_graphiql_is_off_in_production(
    production_server: RunningServer, http: httpx.AsyncClient
) -> None:
    response = await http.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "<html" not in response.text.lower()


async def test_field_suggestions_are_off_in_production(
    production_server: RunningServer, http: httpx.AsyncClient
) -> None:
    body = await post(http, TYPO)
    [error] = body["errors"]
    assert error["message"] == "Cannot query field 'mee' on type 'Query'."
    assert "Did you mean" not in str(body)


async def test_an_internal_error_is_masked_with_a_correlation_id_logged_with_the_real_cause(
    production_server: RunningServer,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, signed_up = await sign_up(http)
    bearer = {"Authorization": f"Bearer {session_value(signed_up)}"}

    async def broken(**_: object) -> object:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(users_service, "list_active_sessions", broken)
    with caplog.at_level(logging.ERROR, logger="chat.errors"):
        response = await http.post("/graphql", json={"query": SESSIONS}, headers=bearer)
    assert response.status_code == 200
    assert "secret detail" not in response.text
    assert "RuntimeError" not in response.text
    [error] = response.json()["errors"]
    assert error["message"] == INTERNAL_MESSAGE
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    correlation_id = error["extensions"]["correlationId"]
    assert re.fullmatch(r"[0-9a-f]{32}", correlation_id), correlation_id
    [record] = [r for r in caplog.records if r.name == "chat.errors"]
    assert correlation_id in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
    assert str(record.exc_info[1]) == "secret detail"
    monkeypatch.undo()
    await assert_still_serving(production_server)


async def test_in_production_the_session_cookie_is_secure_and_host_prefixed(
    production_server: RunningServer, http: httpx.AsyncClient
) -> None:
    name, response = await sign_up(http)
    [set_cookie] = response.headers.get_list("set-cookie")
    assert set_cookie.startswith("__Host-session=")
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}
    assert {"secure", "httponly", "path"} <= attributes
    assert "domain" not in attributes  # __Host- cookies must not have one
    assert "Path=/;" in set_cookie or set_cookie.endswith("Path=/")
    # The server reads the cookie under that name.
    cookie = f"__Host-session={session_value(response)}"
    async with httpx.AsyncClient(base_url=production_server.url) as other:
        me = await post(other, ME_NAME, headers={"Cookie": cookie})
        assert me == {"data": {"me": {"name": name}}}
        plain = await post(other, ME_NAME, headers={"Cookie": f"session={session_value(response)}"})
        assert plain == {"data": {"me": None}}


# --- Development ----------------------------------------------------------------------------


async def test_development_keeps_graphiql_introspection_and_suggestions(
    server: RunningServer,
) -> None:
    assert not server.settings.is_production
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "graphiql" in page.text.lower()
        schema = await post(http, SCHEMA_TYPES)
        assert {"name": "User"} in schema["data"]["__schema"]["types"]
        typo = await post(http, TYPO)
        assert "Did you mean 'me'?" in typo["errors"][0]["message"]
