"""Sockets are followed by one session registry per process: nothing runs per idle socket, and
every socket of a session closes together."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable

import pytest

from api.users.constants import session_channel
from api.users.service import read_token
from schema.view import SESSION_ENDED_CLOSE_CODE
from tests.support import (
    INBOX,
    ME,
    SIGN_OUT,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
)

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
# Tasks of the test's own WebSocket clients (the library's keep-alive and our reader).
CLIENT_SIDE = ("site-packages/websockets/", "tests/support.py")


def server_tasks(tasks: set[asyncio.Task[object]]) -> collections.Counter[str]:
    """The server's tasks among these (the server runs in the test's loop), by coroutine."""
    found: collections.Counter[str] = collections.Counter()
    for task in tasks:
        code = task.get_coro().cr_code  # type: ignore[union-attr]
        if not any(part in code.co_filename for part in CLIENT_SIDE):
            found[code.co_qualname] += 1
    return found


def session_of(client: GraphQLClient, server: RunningServer) -> uuid.UUID:
    keys = server.app.state.chat.keys
    return uuid.UUID(read_token(client.session_cookie, keys=keys).session_id)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll: task counts and the registry's entries change without a signal to wait on."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_authenticated_sockets_run_no_task_of_their_own_while_idle(
    server: RunningServer, make_client, protocol: str
) -> None:
    """Besides uvicorn's one task per connection (the ASGI call itself), an authenticated
    socket adds no task: its session is followed by the process's registry."""
    count = 12
    clients: list[GraphQLClient] = [make_client() for _ in range(3)]
    for client in clients:
        await client.sign_up()
    registry = server.app.state.chat.session_registry
    before = asyncio.all_tasks()
    sockets_before = registry.socket_count
    async with contextlib.AsyncExitStack() as stack:
        for index in range(count):
            await stack.enter_async_context(
                GraphQLWebSocket.connect(
                    server.ws_url, cookie=clients[index % 3].session_cookie, protocol=protocol
                )
            )
        await until(lambda: registry.socket_count == sockets_before + count)
        # The registry's first reads of the new sessions are short-lived work: let them end.
        await until(lambda: not server_tasks(asyncio.all_tasks() - before) - _asgi(count))
        added = server_tasks(asyncio.all_tasks() - before)
        assert added == _asgi(count), added


def _asgi(count: int) -> collections.Counter[str]:
    return collections.Counter({"WebSocketsSansIOProtocol.run_asgi": count})


async def test_signing_out_closes_every_socket_of_the_session_through_one_registry_entry(
    server: RunningServer, make_client
) -> None:
    laptop: GraphQLClient = make_client()
    user = await laptop.sign_up()
    phone: GraphQLClient = make_client()
    await phone.sign_in(user["name"])
    state = server.app.state.chat
    registry = state.session_registry
    laptop_session = session_of(laptop, server)
    async with contextlib.AsyncExitStack() as stack:
        laptop_sockets = [
            await stack.enter_async_context(
                GraphQLWebSocket.connect(server.ws_url, cookie=laptop.session_cookie, protocol=p)
            )
            for p in [*PROTOCOLS, PROTOCOLS[0]]
        ]
        phone_socket = await stack.enter_async_context(
            GraphQLWebSocket.connect(server.ws_url, cookie=phone.session_cookie)
        )
        for socket in [*laptop_sockets, phone_socket]:
            await socket.subscribe(INBOX)
        await until(lambda: state.pubsub.subscribers(session_channel(laptop_session)) == 1)
        # Three sockets, one session: one channel subscription between them.
        assert state.pubsub.subscribers(session_channel(laptop_session)) == 1
        assert await laptop.data(SIGN_OUT) == {"signOut": True}
        for socket in laptop_sockets:
            closed = await asyncio.wait_for(asyncio.shield(socket.closed), 1.0)
            assert closed.code == SESSION_ENDED_CLOSE_CODE
            assert closed.reason == "session revoked"
        # The other device's session is followed still, and its socket stays open.
        await until(lambda: state.pubsub.subscribers(session_channel(laptop_session)) == 0)
        assert not phone_socket.closed.done()
        assert session_of(phone, server) in registry._sessions
        assert laptop_session not in registry._sessions
    assert (await phone.data(ME))["me"]["name"] == user["name"]


async def test_the_last_socket_of_a_session_takes_it_out_of_the_registry(
    server: RunningServer, make_client
) -> None:
    client: GraphQLClient = make_client()
    await client.sign_up()
    state = server.app.state.chat
    session_id = session_of(client, server)
    channel = session_channel(session_id)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie):
        async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie):
            await until(lambda: state.pubsub.subscribers(channel) == 1)
        await asyncio.sleep(0.1)
        # One socket left: the session is followed still.
        assert session_id in state.session_registry._sessions
        assert state.pubsub.subscribers(channel) == 1
    await until(lambda: session_id not in state.session_registry._sessions)
    await until(lambda: state.pubsub.subscribers(channel) == 0)
