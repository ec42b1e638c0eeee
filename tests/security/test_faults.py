"""Faults: the database going away and coming back, and a graceful restart under load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import TEST_ITERATIONS, TEST_SECRET, make_settings
from tests.support import (
    ME,
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RedisServer,
    ServerProcess,
    assert_exactly_once_in_order,
    free_port,
    open_direct_room,
    running_server,
    send,
)


class TcpProxy:
    """A loopback TCP proxy that a test can cut (refuse and drop everything) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every open connection, like a crashed database host."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update({writer, up_writer})

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update({writer, up_writer})


@pytest.fixture
def postgres_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("the database-outage test needs PostgreSQL (TEST_DATABASE_URL)")
    return database_url


async def test_operations_fail_fast_while_the_database_is_down_and_recover_without_restart(
    postgres_url: str, broadcast_url: str, data_dir: Path
) -> None:
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(proxied, broadcast_url, data_dir)
    async with running_server(settings, run_migrations=False) as server:
        client = GraphQLClient(server.url)
        await client.sign_up()
        assert (await client.http.get("/healthz")).status_code == 200

        await proxy.cut()
        started = time.monotonic()
        error = await client.error(ME)
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert time.monotonic() - started < 6
        health = await client.http.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"

        await proxy.start()
        assert (await client.http.get("/healthz")).status_code == 200
        assert (await client.data(ME))["me"]["name"] == client.user["name"]  # type: ignore[index]
        await client.aclose()
    await proxy.cut()


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server on PATH")
    server = RedisServer()
    await server.start()
    yield server
    await server.stop(kill=True)


@pytest.mark.slow
async def test_sigterm_closes_sockets_with_1012_and_a_client_resuming_elsewhere_has_every_message(
    redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEST_")}
    env.update(
        DATABASE_URL=database_url,
        BROADCAST_URL=redis.url,
        SECRET_KEY=TEST_SECRET,
        PBKDF2_ITERATIONS=str(TEST_ITERATIONS),
        DATA_DIR=str(tmp_path),
        RATE_LIMIT_MESSAGES="0",
    )
    doomed, survivor = ServerProcess(env), ServerProcess(env)
    await asyncio.gather(doomed.start(), survivor.start())
    try:
        alice, bob = GraphQLClient(doomed.url), GraphQLClient(doomed.url)
        await alice.sign_up()
        bob_user = await bob.sign_up()
        room_id = await open_direct_room(alice, bob_user["name"])
        first = await send(alice, room_id, "first")
        alice_elsewhere = GraphQLClient(survivor.url)
        await alice_elsewhere.sign_in(alice.user["name"])  # type: ignore[index]

        received: list[dict[str, object]] = []
        async with GraphQLWebSocket.connect(doomed.ws_url, cookie=bob.session_cookie) as socket:
            follow = await socket.subscribe(
                MESSAGE_ADDED, {"roomId": room_id, "after": first["cursor"]}
            )
            sent_seqs: list[int] = []
            # Send through the doomed instance until it goes away, then through the survivor.
            for i in range(60):
                if i == 20:
                    assert doomed.process is not None
                    doomed.process.send_signal(signal.SIGTERM)
                try:
                    message = await send(alice, room_id, f"m{i}")
                except Exception:
                    message = await send(alice_elsewhere, room_id, f"m{i}")
                sent_seqs.append(int(message["seq"]))
            while True:
                item = await follow.next_message(timeout=30)
                if item["type"] == "closed":
                    break
                received.append(item["payload"]["data"]["messageAdded"])
            closed = await asyncio.wait_for(asyncio.shield(socket.closed), 30)
        assert closed.code == 1012
        # uvicorn finishes gracefully, then re-raises SIGTERM so the exit status tells the truth.
        assert await asyncio.wait_for(doomed.process.wait(), 30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
        await doomed.stop()
        assert any("Finished server process" in line for line in doomed.output), doomed.output

        # Reconnect to the survivor and resume after the last message received.
        last_cursor = received[-1]["cursor"] if received else first["cursor"]
        already = [int(m["seq"]) for m in received]  # type: ignore[call-overload]
        missing = 61 - (already[-1] if already else 1)
        bob_elsewhere = await _signed_in(survivor, bob_user["name"])
        async with GraphQLWebSocket.connect(
            survivor.ws_url, cookie=bob_elsewhere.session_cookie
        ) as socket:
            follow = await socket.subscribe(
                MESSAGE_ADDED, {"roomId": room_id, "after": last_cursor}
            )
            resumed = [
                (await follow.data(timeout=30))["messageAdded"]["seq"] for _ in range(missing)
            ]
        assert sent_seqs == list(range(2, 62))
        assert_exactly_once_in_order(already + resumed, 2, 61)
        for client in (alice, bob, alice_elsewhere, bob_elsewhere):
            await client.aclose()
    finally:
        await asyncio.gather(doomed.stop(), survivor.stop())


async def _signed_in(server: ServerProcess, name: str) -> GraphQLClient:
    client = GraphQLClient(server.url)
    await client.sign_in(name)
    return client
