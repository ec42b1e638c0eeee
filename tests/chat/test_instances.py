"""Several server processes through Redis, broker outages and slow consumers: nothing lost."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import TEST_ITERATIONS, TEST_SECRET, make_settings
from tests.support import (
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RedisServer,
    ServerProcess,
    assert_exactly_once_in_order,
    open_direct_room,
    running_server,
    send,
)

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server on PATH"
)


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    yield server
    await server.stop(kill=True)


async def collect(
    ws_url: str, cookie: str, room_id: str, after: str, count: int, ready: asyncio.Event
) -> list[int]:
    """Follow a room from a cursor until `count` messages arrived; their seqs."""
    seqs: list[int] = []
    async with GraphQLWebSocket.connect(ws_url, cookie=cookie) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id, "after": after})
        ready.set()
        while len(seqs) < count:
            seqs.append((await follow.data(timeout=60))["messageAdded"]["seq"])
    return seqs


async def make_pair(base_url: str) -> tuple[GraphQLClient, GraphQLClient, str, dict[str, object]]:
    alice, bob = GraphQLClient(base_url), GraphQLClient(base_url)
    await alice.sign_up()
    bob_user = await bob.sign_up()
    room_id = await open_direct_room(alice, bob_user["name"])
    first = await send(alice, room_id, "first")
    return alice, bob, room_id, first


def instance_env(database_url: str, broadcast_url: str, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEST_")}
    env.update(
        DATABASE_URL=database_url,
        BROADCAST_URL=broadcast_url,
        SECRET_KEY=TEST_SECRET,
        PBKDF2_ITERATIONS=str(TEST_ITERATIONS),
        DATA_DIR=str(data_dir),
        RATE_LIMIT_MESSAGES="0",
        RATE_LIMIT_SIGN_IN="0",
        RATE_LIMIT_SIGN_IN_PER_ADDRESS="0",
    )
    return env


@pytest.fixture
async def two_instances(
    redis: RedisServer, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    env = instance_env(database_url, redis.url, tmp_path)
    first, second = ServerProcess(env), ServerProcess(env)
    await asyncio.gather(first.start(), second.start())
    yield first, second
    await asyncio.gather(first.stop(), second.stop())


@needs_redis
@pytest.mark.slow
async def test_a_subscriber_on_one_instance_receives_what_is_sent_through_another_exactly_once(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_instances
    alice, bob, room_id, first = await make_pair(a.url)
    bob_on_b = GraphQLClient(b.url)
    await bob_on_b.sign_in(bob.user["name"])  # type: ignore[index]
    count = 100
    ready_a, ready_b = asyncio.Event(), asyncio.Event()
    on_a = asyncio.create_task(
        collect(a.ws_url, bob.session_cookie, room_id, str(first["cursor"]), count, ready_a)
    )
    on_b = asyncio.create_task(
        collect(b.ws_url, bob_on_b.session_cookie, room_id, str(first["cursor"]), count, ready_b)
    )
    await asyncio.gather(ready_a.wait(), ready_b.wait())
    alice_on_b = GraphQLClient(b.url)
    await alice_on_b.sign_in(alice.user["name"])  # type: ignore[index]
    for i in range(count):
        await send(alice_on_b, room_id, f"via b {i}")
    assert_exactly_once_in_order(await asyncio.wait_for(on_a, 60), 2, count + 1)
    assert_exactly_once_in_order(await asyncio.wait_for(on_b, 60), 2, count + 1)
    for client in (alice, bob, bob_on_b, alice_on_b):
        await client.aclose()


@needs_redis
@pytest.mark.slow
async def test_restarting_redis_while_messages_flow_between_instances_loses_nothing(
    redis: RedisServer, two_instances: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = two_instances
    alice, bob, room_id, first = await make_pair(a.url)
    alice_on_b, bob_on_b = GraphQLClient(b.url), GraphQLClient(b.url)
    await alice_on_b.sign_in(alice.user["name"])  # type: ignore[index]
    await bob_on_b.sign_in(bob.user["name"])  # type: ignore[index]
    count = 150
    readies = [asyncio.Event() for _ in range(2)]
    watchers = [
        asyncio.create_task(
            collect(server.ws_url, cookie, room_id, str(first["cursor"]), count, ready)
        )
        for server, cookie, ready in (
            (a, bob.session_cookie, readies[0]),
            (b, bob_on_b.session_cookie, readies[1]),
        )
    ]
    await asyncio.gather(*(ready.wait() for ready in readies))
    for i in range(count):
        if i == count // 3:
            await redis.stop(kill=True)
        if i == 2 * count // 3:
            await redis.start()
        # Alternate instances; sends commit whether or not Redis is there.
        await send(alice if i % 2 else alice_on_b, room_id, f"m{i}")
    for watcher in watchers:
        assert_exactly_once_in_order(await asyncio.wait_for(watcher, 90), 2, count + 1)
    for client in (alice, bob, alice_on_b, bob_on_b):
        await client.aclose()


@needs_redis
async def test_a_subscriber_fills_the_gap_from_the_database_after_a_redis_outage(
    redis: RedisServer, database_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, redis.url, data_dir)
    async with running_server(settings, run_migrations=False) as server:
        alice, bob, room_id, first = await make_pair(server.url)
        ready = asyncio.Event()
        watcher = asyncio.create_task(
            collect(server.ws_url, bob.session_cookie, room_id, str(first["cursor"]), 30, ready)
        )
        await ready.wait()
        for i in range(10):
            await send(alice, room_id, f"before {i}")
        await redis.stop(kill=True)
        for i in range(10):
            await send(alice, room_id, f"during {i}")
        await redis.start()
        for i in range(10):
            await send(alice, room_id, f"after {i}")
        assert_exactly_once_in_order(await asyncio.wait_for(watcher, 60), 2, 31)
        await alice.aclose()
        await bob.aclose()
