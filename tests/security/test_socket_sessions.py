"""Sockets follow their session: sign-out and expiry close them, on any instance."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from api.core.db import Database, utcnow
from api.core.errors import ServiceUnavailable
from api.users import store as users_store
from api.users.store import SESSIONS
from schema.view import SESSION_ENDED_CLOSE_CODE
from tests.conftest import make_settings
from tests.security.test_faults import TcpProxy
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
    subscription_total,
    wait_for_subscriber_total,
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


# --- the watcher survives database errors -------------------------------------------------------


async def test_a_socket_whose_first_session_read_fails_still_closes_on_sign_out(
    server: RunningServer, make_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = asyncio.Event()
    real_read = users_store.session_deadline

    async def fails_once(db: Database, *, session_id: uuid.UUID) -> datetime | None:
        if not failed.is_set():
            failed.set()
            raise ServiceUnavailable()
        return await real_read(db, session_id=session_id)

    monkeypatch.setattr(users_store, "session_deadline", fails_once)
    client: GraphQLClient = make_client()
    await client.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        await socket.subscribe(INBOX)
        await asyncio.wait_for(failed.wait(), 5)
        await client.data(SIGN_OUT)
        closed = await closed_within(socket, 1.0)
    assert closed.code == SESSION_ENDED_CLOSE_CODE


@pytest.fixture
async def database_outage(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A database URL for a server, and how to make that database unreachable: a TCP proxy
    cut in front of PostgreSQL; on SQLite (a file, nothing to cut) the session reads fail
    the way they do when PostgreSQL is unreachable."""
    if not database_url.startswith("postgresql"):

        async def unreachable(*_: object, **__: object) -> NoReturn:
            raise ServiceUnavailable()

        async def fail_reads() -> None:
            monkeypatch.setattr(users_store, "session_deadline", unreachable)
            monkeypatch.setattr(users_store, "session_deadlines", unreachable)

        yield database_url, fail_reads
        return
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield (
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        proxy.cut,
    )
    await proxy.cut()


async def test_sockets_close_when_their_sessions_cannot_be_verified_for_the_limit(
    database_outage: tuple[str, Callable[[], Awaitable[None]]],
    broadcast_url: str,
    data_dir: Path,
) -> None:
    url, stop_database = database_outage
    settings = make_settings(url, broadcast_url, data_dir, session_verify_timeout=1.0)
    async with running_server(settings, run_migrations=False) as short_leash:
        clients = [GraphQLClient(short_leash.url) for _ in range(3)]
        for client in clients:
            await client.sign_up()
        async with contextlib.AsyncExitStack() as stack:
            sockets = [
                await stack.enter_async_context(
                    GraphQLWebSocket.connect(short_leash.ws_url, cookie=client.session_cookie)
                )
                for client in clients
            ]
            for socket in sockets:
                await socket.subscribe(INBOX)
            # While the database answers, the limit passes and passes again: nothing closes.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(sockets[0].closed), 2.5)
            await stop_database()
            for socket in sockets:
                closed = await closed_within(socket, 5.0)
                assert closed.code == SESSION_ENDED_CLOSE_CODE
                assert closed.reason == "session unverifiable"
        for client in clients:
            await client.aclose()


async def test_after_a_broker_reconnect_the_sockets_reread_their_sessions_spread_out(
    server: RunningServer, make_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 20
    reads: list[float] = []
    all_read = asyncio.Event()
    real_read = users_store.session_deadline
    loop = asyncio.get_running_loop()

    async def timed(db: Database, *, session_id: uuid.UUID) -> datetime | None:
        reads.append(loop.time())
        if len(reads) == count:
            all_read.set()
        return await real_read(db, session_id=session_id)

    baseline = subscription_total(server)  # the app's own (session notices, signals)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            client: GraphQLClient = make_client()
            await client.sign_up()
            socket = await stack.enter_async_context(
                GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie)
            )
            await socket.subscribe(INBOX)
        # A watcher and an inbox each.
        await wait_for_subscriber_total(server, baseline + 2 * count)
        monkeypatch.setattr(users_store, "session_deadline", timed)
        # What a broker reconnect tells every subscriber: notices may have been lost.
        server.app.state.chat.pubsub._resync_all()
        await asyncio.wait_for(all_read.wait(), 5)
    # Spread over the RESYNC window, not all at once.
    assert max(reads) - min(reads) >= 0.5, sorted(r - min(reads) for r in reads)


# --- purging ended sessions ---------------------------------------------------------------------


async def test_revoked_and_expired_sessions_are_purged_and_their_sockets_closed(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, broadcast_url, data_dir, session_purge_interval=0.3)
    db = Database(database_url, pool_size=2)
    async with running_server(settings, run_migrations=False) as purging:
        laptop, phone = GraphQLClient(purging.url), GraphQLClient(purging.url)
        user = await laptop.sign_up()
        await phone.sign_in(user["name"])
        [revoked, expired] = [await session_id_of(c, purging) for c in (laptop, phone)]
        async with GraphQLWebSocket.connect(purging.ws_url, cookie=laptop.session_cookie) as socket:
            await socket.subscribe(INBOX)
            # Ended behind the server's back (a lost notice): only the purge can tell the socket.
            async with db.write() as connection:
                await connection.execute(
                    SESSIONS.update().where(SESSIONS.c.id == revoked).values(revoked_at=utcnow())
                )
                await connection.execute(
                    SESSIONS.update()
                    .where(SESSIONS.c.id == expired)
                    .values(expires_at=utcnow() - timedelta(minutes=1))
                )
            closed = await closed_within(socket, 5.0)
        assert closed.code == SESSION_ENDED_CLOSE_CODE
        async with db.read() as connection:
            left = (
                await connection.execute(
                    sa.select(SESSIONS.c.id).where(SESSIONS.c.id.in_([revoked, expired]))
                )
            ).all()
        assert left == []
        for client in (laptop, phone):
            await client.aclose()
    await db.dispose()


async def session_id_of(client: GraphQLClient, server: RunningServer) -> uuid.UUID:
    data = await client.data("query { sessions { id current } }")
    [current] = [s for s in data["sessions"] if s["current"]]
    return uuid.UUID(current["id"])
