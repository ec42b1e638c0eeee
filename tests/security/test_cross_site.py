"""Cross-site requests: CSRF by simple bodies and GET, CORS with credentials, socket origins."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.security.conftest import assert_still_serving, policy_server
from tests.support import (
    PASSWORD,
    SIGN_UP,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    unique_name,
)

ALLOWED_ORIGIN = "http://app.example"
EVIL_ORIGIN = "http://evil.example"
ME_NAME = "query { me { name } }"
ME_ID = "query { me { id } }"


@pytest.fixture(scope="module")
async def cors_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """A server whose ALLOWED_ORIGINS lists one trusted front-end origin."""
    async with policy_server(
        database_url, broadcast_url, data_dir, allowed_origins=[ALLOWED_ORIGIN]
    ) as server:
        yield server


@pytest.fixture
async def browser(cors_server: RunningServer) -> AsyncIterator[GraphQLClient]:
    """A signed-in browser of the CORS server."""
    client = GraphQLClient(cors_server.url)
    await client.sign_up()
    yield client
    await client.aclose()


def sign_up_body(name: str) -> dict[str, Any]:
    return {"query": SIGN_UP, "variables": {"name": name, "password": PASSWORD}}


async def assert_name_is_free(client: GraphQLClient, name: str) -> None:
    """The refused request created nothing: the same sign-up as JSON succeeds now."""
    user = await client.sign_up(name)
    assert user["name"] == name


# --- CSRF: only JSON bodies reach GraphQL --------------------------------------------------


def _text_plain(name: str) -> dict[str, Any]:
    return {
        "content": json.dumps(sign_up_body(name)),
        "headers": {"Content-Type": "text/plain;charset=UTF-8"},
    }


def _form(name: str) -> dict[str, Any]:
    body = sign_up_body(name)
    return {"data": {"query": body["query"], "variables": json.dumps(body["variables"])}}


def _multipart(name: str) -> dict[str, Any]:
    # The GraphQL multipart request spec (file uploads), which a <form> can also send.
    return {"files": {"operations": (None, json.dumps(sign_up_body(name))), "map": (None, "{}")}}


@pytest.mark.parametrize(
    ("body_kind", "make_request"),
    [("text/plain", _text_plain), ("form", _form), ("multipart", _multipart)],
)
async def test_a_sign_up_posted_as_a_simple_cross_site_body_is_refused_and_creates_nothing(
    server: RunningServer, client: GraphQLClient, body_kind: str, make_request: Any
) -> None:
    name = unique_name("csrf")
    response = await client.http.post("/graphql", **make_request(name))
    assert response.status_code == 415, (body_kind, response.status_code, response.text)
    assert "set-cookie" not in response.headers
    await assert_name_is_free(client, name)
    await assert_still_serving(server)


async def test_a_mutation_by_get_is_refused_with_405_allow_post_and_creates_nothing(
    server: RunningServer, client: GraphQLClient
) -> None:
    name = unique_name("csrf")
    body = sign_up_body(name)
    response = await client.http.get(
        "/graphql", params={"query": body["query"], "variables": json.dumps(body["variables"])}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "set-cookie" not in response.headers
    await assert_name_is_free(client, name)
    await assert_still_serving(server)


@pytest.mark.parametrize("accept", ["application/json", "*/*", "application/graphql-response+json"])
async def test_queries_by_get_are_off(server: RunningServer, accept: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/graphql", params={"query": ME_ID}, headers={"Accept": accept})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "data" not in response.text
    await assert_still_serving(server)


async def test_a_graphiql_share_link_opens_graphiql_and_executes_nothing(
    server: RunningServer, client: GraphQLClient
) -> None:
    # What a browser sends when it follows a share link: GET with the document in the URL.
    name = unique_name("shared")
    body = sign_up_body(name)
    response = await client.http.get(
        "/graphql",
        params={"query": body["query"], "variables": json.dumps(body["variables"])},
        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<div id="graphiql"' in response.text
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    # The mutation in the link never ran.
    assert "set-cookie" not in response.headers
    await assert_name_is_free(client, name)
    # The page fills its editor from the link's `query` (GraphiQL's share format).
    init = (await client.http.get("/graphql/static/init.js")).text
    assert "new URLSearchParams(window.location.search)" in init
    assert "parameters.q = parameters.query" in init


# --- CORS with credentials -----------------------------------------------------------------


async def test_a_preflight_from_an_allowed_origin_gets_exactly_that_origin_with_credentials(
    cors_server: RunningServer,
) -> None:
    async with httpx.AsyncClient(base_url=cors_server.url) as http:
        response = await http.options(
            "/graphql",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "content-type" in response.headers["access-control-allow-headers"].lower()


async def test_a_credentialed_request_from_an_allowed_origin_gets_that_origin_echoed_not_a_wildcard(
    cors_server: RunningServer, browser: GraphQLClient
) -> None:
    response = await browser.http.post(
        "/graphql", json={"query": ME_NAME}, headers={"Origin": ALLOWED_ORIGIN}
    )
    assert response.status_code == 200
    assert response.json()["data"]["me"] is not None  # the cookie was used
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"
    # The answer depends on Origin: caches must not hand it to another origin.
    assert "origin" in response.headers["vary"].lower()


@pytest.mark.parametrize(
    "origin", [EVIL_ORIGIN, "https://app.example", "http://app.example.evil.example", "null"]
)
async def test_an_unlisted_origin_gets_no_allow_origin_on_preflight_or_request(
    cors_server: RunningServer, browser: GraphQLClient, origin: str
) -> None:
    preflight = await browser.http.options(
        "/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code >= 400
    response = await browser.http.post(
        "/graphql", json={"query": ME_NAME}, headers={"Origin": origin}
    )
    assert "access-control-allow-origin" not in response.headers
    await assert_still_serving(cors_server)


# --- WebSocket handshakes: origin checked before anything runs -----------------------------


@pytest.mark.parametrize(
    "origin",
    [
        EVIL_ORIGIN,
        "null",  # sandboxed iframes and file: pages
        "https://app.example",  # the allowed host on another scheme
        "http://127.0.0.1:9",  # the server's host on another port
    ],
)
async def test_a_websocket_handshake_from_a_foreign_origin_is_refused_even_with_a_valid_cookie(
    cors_server: RunningServer, browser: GraphQLClient, origin: str
) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with GraphQLWebSocket.connect(
            cors_server.ws_url, cookie=browser.session_cookie, origin=origin, init=False
        ):
            pass  # pragma: no cover - the handshake must not succeed
    assert refused.value.response.status_code == 403
    await assert_still_serving(cors_server)


@pytest.mark.parametrize("origin_kind", ["allowed", "same-origin", "none"])
async def test_a_websocket_from_an_allowed_origin_the_same_origin_or_no_origin_works(
    cors_server: RunningServer, browser: GraphQLClient, origin_kind: str
) -> None:
    origin = {"allowed": ALLOWED_ORIGIN, "same-origin": cors_server.url, "none": None}[origin_kind]
    async with GraphQLWebSocket.connect(
        cors_server.ws_url, cookie=browser.session_cookie, origin=origin
    ) as socket:
        operation = await socket.subscribe(ME_NAME)
        data = await operation.data()
    assert browser.user is not None
    assert data == {"me": {"name": browser.user["name"]}}
