"""Several server processes through Redis, broker outages and slow consumers: nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis_client

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


async def subscriber_connections(control: redis_client.Redis) -> set[int]:
    """The ids of the Redis connections that listen to channels (one per server process)."""
    clients = await control.client_list()
    return {int(c["id"]) for c in clients if int(c.get("sub", 0)) or int(c.get("psub", 0))}


async def until_subscriber_connections(control: redis_client.Redis, count: int) -> set[int]:
    """The listening connections, once there are `count` of them. Another process's state in
    Redis gives nothing to await: this polls."""
    async with asyncio.timeout(10):
        while len(found := await subscriber_connections(control)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return found


@needs_redis
@pytest.mark.slow
async def test_a_message_sent_through_an_instance_whose_listener_is_down_reaches_the_others(
    redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    control = redis_client.Redis.from_url(redis.url)
    env = instance_env(database_url, redis.url, tmp_path)
    deaf, other = ServerProcess(env), ServerProcess(env)
    try:
        # Started one after the other, so each one's listening connection is known.
        await other.start()
        others_listener = await until_subscriber_connections(control, 1)
        await deaf.start()
        await until_subscriber_connections(control, 2)
        alice, bob, room_id, first = await make_pair(deaf.url)
        bob_on_other = GraphQLClient(other.url)
        await bob_on_other.sign_in(bob.user["name"])  # type: ignore[index]
        async with GraphQLWebSocket.connect(
            other.ws_url, cookie=bob_on_other.session_cookie
        ) as socket:
            follow = await socket.subscribe(
                MESSAGE_ADDED, {"roomId": room_id, "after": first["cursor"]}
            )
            warm_up = await send(alice, room_id, "warm-up")
            assert (await follow.data())["messageAdded"]["seq"] == warm_up["seq"]

            # From now on the sending instance's listening connection is cut, and cut again as
            # soon as it reconnects; nothing else of it, and nothing of the other instance.
            killed = 0

            async def kill_the_deaf_listener() -> None:
                nonlocal killed
                for client_id in await subscriber_connections(control) - others_listener:
                    await control.client_kill_filter(_id=str(client_id))
                    killed += 1

            await kill_the_deaf_listener()
            assert killed == 1
            stop = asyncio.Event()

            async def keep_killing() -> None:
                while not stop.is_set():
                    await kill_the_deaf_listener()

            killer = asyncio.create_task(keep_killing())
            try:
                sent = [await send(alice, room_id, f"while deaf {i}") for i in range(20)]
            finally:
                stop.set()
                await killer
            assert killed > 1  # it did reconnect, and was cut again
            # Every message reaches the other instance's subscriber within 2 s, with no later
            # message sent to reveal a gap.
            received = [(await follow.data(timeout=2))["messageAdded"]["seq"] for _ in sent]
            assert received == [message["seq"] for message in sent]
        for client in (alice, bob, bob_on_other):
            await client.aclose()
    finally:
        await asyncio.gather(deaf.stop(), other.stop())
        await control.aclose()


@needs_redis
@pytest.mark.slow
async def test_a_member_removed_through_one_instance_loses_their_subscriptions_on_both(
    two_instances: tuple[ServerProcess, ServerProcess],
) -> None:
    from tests.chat.test_groups import CREATE, EVENTS, REMOVE, ROOM_EVENTS

    a, b = two_instances
    alice, bob = GraphQLClient(a.url), GraphQLClient(a.url)
    await alice.sign_up()
    bob_name = (await bob.sign_up())["name"]
    room_id = (await alice.data(CREATE, {"name": "g", "members": [bob_name]}))["createRoom"]["id"]
    bob_on_b, alice_on_b = GraphQLClient(b.url), GraphQLClient(b.url)
    await bob_on_b.sign_in(bob_name)
    await alice_on_b.sign_in(alice.user["name"])  # type: ignore[index]
    page = await alice.data(EVENTS, {"roomId": room_id, "last": 1})
    after = {"roomId": room_id, "after": page["roomEvents"]["pageInfo"]["endCursor"]}
    async with (
        GraphQLWebSocket.connect(a.ws_url, cookie=bob.session_cookie) as on_a,
        GraphQLWebSocket.connect(b.ws_url, cookie=bob_on_b.session_cookie) as on_b,
    ):
        streams = [
            await on_a.subscribe(MESSAGE_ADDED, after),
            await on_a.subscribe(ROOM_EVENTS, after),
            await on_b.subscribe(MESSAGE_ADDED, after),
            await on_b.subscribe(ROOM_EVENTS, after),
        ]
        # Every stream is running once it has the message sent after its cursor.
        await send(alice, room_id, "hello")
        for stream in streams:
            payload = await stream.next(timeout=30)
            assert not payload.get("errors"), payload
        await alice_on_b.data(REMOVE, {"roomId": room_id, "name": bob_name})
        for stream in streams:
            payload = await stream.next(timeout=1)
            if not payload.get("errors"):  # roomEvents: the MemberLeft comes first
                assert payload["data"]["roomEvents"]["__typename"] == "MemberLeft"
                payload = await stream.next(timeout=1)
            assert payload["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    for client in (alice, bob, bob_on_b, alice_on_b):
        await client.aclose()


@needs_redis
@pytest.mark.slow
async def test_typing_and_presence_cross_instances_and_a_killed_instance_s_users_go_offline(
    redis: RedisServer, database_url: str, tmp_path: Path
) -> None:
    from tests.chat.test_signals import SIGNALS, TYPING, summary

    # A short presence TTL, so the test waits seconds, not the default's 20-25.
    env = {**instance_env(database_url, redis.url, tmp_path), "PRESENCE_TIMEOUT": "4"}
    a, b = ServerProcess(env), ServerProcess(env)
    await asyncio.gather(a.start(), b.start())
    try:
        alice, bob, room_id, _ = await make_pair(a.url)
        bob_on_b = GraphQLClient(b.url)
        await bob_on_b.sign_in(bob.user["name"])  # type: ignore[index]
        async with GraphQLWebSocket.connect(a.ws_url, cookie=alice.session_cookie) as on_a:
            stream = await on_a.subscribe(SIGNALS, {"roomId": room_id})
            assert summary((await stream.data())["roomSignals"])[0:2] == (
                "Presence",
                alice.user["name"],  # type: ignore[index]
            )
            # bob's socket on b is left open: b is killed under it below.
            bob_socket = GraphQLWebSocket.connect(b.ws_url, cookie=bob_on_b.session_cookie)
            await bob_socket.__aenter__()
            assert summary((await stream.data())["roomSignals"]) == (
                "Presence",
                bob.user["name"],  # type: ignore[index]
                True,
            )
            # Typing through b reaches the subscriber on a.
            await bob_on_b.data(TYPING, {"roomId": room_id, "typing": True})
            assert summary((await stream.data())["roomSignals"]) == (
                "Typing",
                bob.user["name"],  # type: ignore[index]
                True,
            )
            # b dies without a word: bob goes offline on a once b's presence keys lapse
            # (PRESENCE_TIMEOUT, plus at most a quarter of it for a's next check).
            killed = time.monotonic()
            await b.stop(kill=True)
            seen = [summary((await stream.data(timeout=15))["roomSignals"]) for _ in range(2)]
            assert ("Presence", bob.user["name"], False) in seen  # type: ignore[index]
            assert time.monotonic() - killed <= 4 * 1.25 + 2
            with contextlib.suppress(Exception):
                await bob_socket.__aexit__(None, None, None)
        for client in (alice, bob, bob_on_b):
            await client.aclose()
    finally:
        await asyncio.gather(a.stop(), b.stop())
