"""Sockets follow their session: sign-out and expiry close them, on any instance."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from schema.view import SESSION_ENDED_CLOSE_CODE
from tests.conftest import make_settings
from tests.support import (
    INBOX,
    ME,
    SIGN_OUT,
    GraphQLClient,
    GraphQLWebSocket,
    RedisServer,
    RunningServer,
    WSClosed,
    running_server,
)

REFRESH = "mutation { refreshToken { expiresAt } }"


async def closed_within(socket: GraphQLWebSocket, seconds: float) -> WSClosed:
    return await asyncio.wait_for(asyncio.shield(socket.closed), seconds)


async def test_signing_out_closes_that_sessions_sockets_within_a_second(
    server: RunningServer, make_client
) -> None:
    laptop: GraphQLClient = make_client()
    user = await laptop.sign_up()
    phone: GraphQLClient = make_client()
    await phone.sign_in(user["name"])
    async with (
        GraphQLWebSocket.connect(server.ws_url, cookie=laptop.session_cookie) as laptop_socket,
        GraphQLWebSocket.connect(server.ws_url, cookie=phone.session_cookie) as phone_socket,
    ):
        await laptop_socket.subscribe(INBOX)
        phone_inbox = await phone_socket.subscribe(INBOX)
        assert await laptop.data(SIGN_OUT) == {"signOut": True}
        closed = await closed_within(laptop_socket, 1.0)
        assert closed.code == SESSION_ENDED_CLOSE_CODE
        # The user's other device has its own session and stays connected.
        assert not phone_socket.closed.done()
        await phone_inbox.stop()
    assert (await phone.data(ME))["me"]["name"] == user["name"]


async def test_a_socket_opened_after_sign_out_is_rejected(
    server: RunningServer, make_client
) -> None:
    client: GraphQLClient = make_client()
    await client.sign_up()
    cookie = client.session_cookie
    await client.data(SIGN_OUT)
    with pytest.raises(WSClosed) as closed:
        async with GraphQLWebSocket.connect(server.ws_url, cookie=cookie) as socket:
            await socket.recv_raw()
    assert closed.value.code == 4403


async def test_a_socket_closes_when_its_session_expires(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    settings = make_settings(
        database_url, broadcast_url, data_dir, session_ttl=timedelta(seconds=2)
    )
    async with running_server(settings, run_migrations=False) as short_lived:
        client = GraphQLClient(short_lived.url)
        await client.sign_up()
        async with GraphQLWebSocket.connect(
            short_lived.ws_url, cookie=client.session_cookie
        ) as socket:
            await socket.subscribe(INBOX)
            closed = await closed_within(socket, 5.0)
        assert closed.code == SESSION_ENDED_CLOSE_CODE
        assert "expired" in closed.reason
        await client.aclose()


async def test_refreshing_keeps_the_sessions_sockets_open(
    server: RunningServer, make_client
) -> None:
    client: GraphQLClient = make_client()
    await client.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        inbox = await socket.subscribe(INBOX)
        await client.data(REFRESH)
        # Sign out with the refreshed cookie: the socket, opened with the old token, closes too,
        # which shows the refresh did not close it and the session is still the same.
        assert not socket.closed.done()
        await client.data(SIGN_OUT)
        closed = await closed_within(socket, 1.0)
        assert closed.code == SESSION_ENDED_CLOSE_CODE
        del inbox


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    server = RedisServer()
    await server.start()
    yield server
    await server.stop(kill=True)


async def test_signing_out_on_one_instance_closes_the_sessions_socket_on_another(
    redis: RedisServer, database_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, redis.url, data_dir)
    async with (
        running_server(settings, run_migrations=False) as first,
        running_server(settings, run_migrations=False) as second,
    ):
        on_first = GraphQLClient(first.url)
        await on_first.sign_up()
        async with GraphQLWebSocket.connect(
            second.ws_url, cookie=on_first.session_cookie
        ) as socket:
            await socket.subscribe(INBOX)
            await on_first.data(SIGN_OUT)
            closed = await closed_within(socket, 1.0)
        assert closed.code == SESSION_ENDED_CLOSE_CODE
        await on_first.aclose()
