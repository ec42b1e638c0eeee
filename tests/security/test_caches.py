"""Caches that hold client documents are bounded in bytes, over HTTP and WebSocket alike."""

from __future__ import annotations

import uuid

from strawberry.extensions import parser_cache, validation_cache

from schema.documents import MAX_CACHED_DOCUMENT_BYTES, Documents
from tests.support import (
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    open_direct_room,
)

ME_NAME = "query { me { name } }"


def padded(document: str, size: int) -> str:
    """The document with comments (no tokens, so under the token limit) up to `size` chars."""
    marker = f"# {uuid.uuid4()}\n"
    return marker + "#" * (size - len(marker) - len(document) - 1) + "\n" + document


def test_the_document_cache_holds_at_most_its_bytes_and_no_large_document() -> None:
    from schema import schema

    documents = Documents(schema._schema, max_bytes=10_000, max_document_bytes=1_000)
    for _ in range(100):
        prepared = documents.prepare(padded(ME_NAME, 900))
        assert prepared.errors is None
        assert documents.cached_bytes <= 10_000
    assert documents.cached_bytes >= 9_000
    large = padded(ME_NAME, 1_001)
    documents.prepare(large)
    assert large not in documents._cache


async def test_sixty_kilobytes_of_comments_are_never_kept_over_http_or_websocket(
    server: RunningServer, client: GraphQLClient, make_client
) -> None:
    state = server.app.state.chat
    await client.sign_up()
    bob: GraphQLClient = make_client()
    bob_user = await bob.sign_up()
    room_id = await open_direct_room(client, bob_user["name"])
    documents_before, shapes_before = state.documents.cached_bytes, state.hub.shapes.cached_bytes
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        for _ in range(5):
            query = padded(ME_NAME, 60_000)
            assert await client.data(query) == {"me": {"name": client.user["name"]}}  # type: ignore[index]
            over_socket = await socket.subscribe(padded(ME_NAME, 60_000))
            assert (await over_socket.data())["me"]["name"] == client.user["name"]  # type: ignore[index]
            follow = await socket.subscribe(padded(MESSAGE_ADDED, 60_000), {"roomId": room_id})
            await follow.stop()
    assert state.documents.cached_bytes == documents_before
    assert state.hub.shapes.cached_bytes == shapes_before


async def test_websocket_operations_use_the_bounded_document_cache(
    server: RunningServer, client: GraphQLClient
) -> None:
    state = server.app.state.chat
    await client.sign_up()
    query = f"query {{ me {{ name }} }} # {uuid.uuid4()}"
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        operation = await socket.subscribe(query)
        assert (await operation.data())["me"]["name"] == client.user["name"]  # type: ignore[index]
    assert len(query) <= MAX_CACHED_DOCUMENT_BYTES
    assert query in state.documents._cache
    # strawberry's entry-count caches (keyed by whole documents) are not in use at all.
    assert parser_cache._get_parse_cache.cache_info().currsize == 0
    assert validation_cache._get_validate_cache.cache_info().currsize == 0
