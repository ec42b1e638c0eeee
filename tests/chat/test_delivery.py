"""Live delivery over real WebSockets: exactly once, in order, on every device, with resume."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from api.chat.constants import room_channel, user_channel
from api.chat.views import encode_message_cursor
from api.users.constants import session_channel
from api.users.service import read_token
from tests.support import (
    INBOX,
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    WSClosed,
    assert_exactly_once_in_order,
    open_direct_room,
    send,
    subscription_total,
    subscriptions_on,
    wait_for_no_subscribers,
    wait_for_subscriber_total,
    wait_for_subscribers,
)

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


async def two_users(make_client) -> tuple[GraphQLClient, GraphQLClient, str]:
    alice, bob = make_client(), make_client()
    await alice.sign_up()
    bob_user = await bob.sign_up()
    room_id = await open_direct_room(alice, bob_user["name"])
    return alice, bob, room_id


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_message_added_delivers_each_message_once_in_order(
    server: RunningServer, make_client, protocol: str
) -> None:
    alice, bob, room_id = await two_users(make_client)
    async with GraphQLWebSocket.connect(
        server.ws_url, cookie=bob.session_cookie, protocol=protocol
    ) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)))
        sent = [await send(alice, room_id, f"hello {i}") for i in range(5)]
        received = [(await follow.data())["messageAdded"] for _ in sent]
    assert [m["seq"] for m in received] == [1, 2, 3, 4, 5]
    assert [m["data"] for m in received] == [m["data"] for m in sent]
    assert [m["cursor"] for m in received] == [m["cursor"] for m in sent]
    assert {m["sender"]["name"] for m in received} == {alice.user["name"]}  # type: ignore[index]


async def test_every_device_receives_every_message_from_concurrent_senders_once_in_order(
    server: RunningServer, make_client
) -> None:
    """4 senders x 250 messages into one room; 3 subscribed devices each see 1..1000 in order."""
    senders_count, per_sender = 4, 250
    total = senders_count * per_sender
    alice, bob, room_id = await two_users(make_client)
    alice_phone, bob_phone = make_client(), make_client()
    await alice_phone.sign_in(alice.user["name"])  # type: ignore[index]
    await bob_phone.sign_in(bob.user["name"])  # type: ignore[index]
    devices = [alice.session_cookie, alice_phone.session_cookie, bob.session_cookie]
    received: list[list[int]] = [[] for _ in devices]

    async def watch(index: int, cookie: str, ready: asyncio.Event, done: asyncio.Event) -> None:
        async with GraphQLWebSocket.connect(server.ws_url, cookie=cookie) as socket:
            follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
            ready.set()
            while len(received[index]) < total:
                received[index].append((await follow.data(timeout=60))["messageAdded"]["seq"])
            done.set()

    readies = [asyncio.Event() for _ in devices]
    dones = [asyncio.Event() for _ in devices]
    watchers = [
        asyncio.create_task(watch(i, cookie, readies[i], dones[i]))
        for i, cookie in enumerate(devices)
    ]
    await asyncio.gather(*(ready.wait() for ready in readies))
    await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), len(devices))

    async def sender(client: GraphQLClient, tag: str) -> list[int]:
        return [(await send(client, room_id, f"{tag}-{i}"))["seq"] for i in range(per_sender)]

    started = time.perf_counter()
    sent = await asyncio.gather(
        sender(alice, "a1"), sender(alice_phone, "a2"), sender(bob, "b1"), sender(bob_phone, "b2")
    )
    try:
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
    except TimeoutError:
        hub = server.app.state.chat.hub
        channel = hub.channels.get(room_channel(uuid.UUID(room_id)))
        sinks = list(channel.sinks) if channel else []
        raise AssertionError(
            "deliveries stalled: "
            + "; ".join(
                f"device {i}: {len(seqs)} received, last {seqs[-3:]}"
                for i, seqs in enumerate(received)
            )
            + f"; server sinks live={[sink.live for sink in sinks]}"
            + f" delivered={[getattr(sink, 'seq', None) for sink in sinks]}"
        ) from None
    elapsed = time.perf_counter() - started
    all_sent = sorted(seq for seqs in sent for seq in seqs)
    assert all_sent == list(range(1, total + 1))
    for seqs in sent:
        assert seqs == sorted(seqs), "a sender's own messages kept their order"
    for seqs in received:
        assert_exactly_once_in_order(seqs, 1, total)
    print(
        f"\nconcurrency: {total} messages, {len(devices)} devices, "
        f"{total * len(devices)} deliveries, lost 0, duplicated 0, out of order 0, {elapsed:.1f}s"
    )


async def test_resume_after_disconnect_yields_missed_messages_then_live_ones(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    channel = room_channel(uuid.UUID(room_id))
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, channel)
        for i in range(3):
            await send(alice, room_id, f"before {i}")
        seen = [(await follow.data())["messageAdded"] for _ in range(3)]
    await wait_for_no_subscribers(server, channel)
    for i in range(4):
        await send(alice, room_id, f"while away {i}")
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        follow = await socket.subscribe(
            MESSAGE_ADDED, {"roomId": room_id, "after": seen[-1]["cursor"]}
        )
        resumed = [(await follow.data())["messageAdded"] for _ in range(4)]
        await send(alice, room_id, "live")
        live = (await follow.data())["messageAdded"]
    assert [m["seq"] for m in resumed] == [4, 5, 6, 7]
    assert [m["data"] for m in resumed] == [f"while away {i}" for i in range(4)]
    assert (live["seq"], live["data"]) == (8, "live")


async def test_resume_from_a_cursor_while_messages_are_being_sent_misses_nothing(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    first = await send(alice, room_id, "first")
    sending = asyncio.gather(*(send(alice, room_id, f"m{i}") for i in range(60)))
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        follow = await socket.subscribe(
            MESSAGE_ADDED, {"roomId": room_id, "after": first["cursor"]}
        )
        seqs = [(await follow.data(timeout=30))["messageAdded"]["seq"] for _ in range(60)]
    await sending
    assert_exactly_once_in_order(seqs, 2, 61)


async def test_subscribing_to_someone_elses_room_is_forbidden(
    server: RunningServer, make_client
) -> None:
    _, _, room_id = await two_users(make_client)
    outsider = make_client()
    await outsider.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=outsider.session_cookie) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        message = await follow.next_message()
    # strawberry reports errors raised when the stream starts as a result with errors.
    assert message["type"] in ("next", "error"), message
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert errors[0]["extensions"]["code"] == "FORBIDDEN"
    assert subscriptions_on(server, room_channel(uuid.UUID(room_id))) == 0


async def test_socket_without_a_session_is_rejected_before_any_operation(
    server: RunningServer,
) -> None:
    with pytest.raises(WSClosed) as closed:
        async with GraphQLWebSocket.connect(server.ws_url) as socket:
            await socket.recv_raw()
    assert closed.value.code == 4403


async def test_socket_with_a_tampered_cookie_is_rejected(
    server: RunningServer, make_client
) -> None:
    client = make_client()
    await client.sign_up()
    cookie = client.session_cookie
    tampered = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    with pytest.raises(WSClosed) as closed:
        async with GraphQLWebSocket.connect(server.ws_url, cookie=tampered) as socket:
            await socket.recv_raw()
    assert closed.value.code == 4403


async def test_bearer_token_in_connection_init_authenticates_the_socket(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    payload = {"authorization": f"Bearer {bob.session_cookie}"}
    async with GraphQLWebSocket.connect(server.ws_url, payload=payload) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)))
        await send(alice, room_id, "over bearer")
        assert (await follow.data())["messageAdded"]["data"] == "over bearer"


async def test_inbox_announces_messages_of_a_direct_room_created_after_subscribing(
    server: RunningServer, make_client
) -> None:
    alice, bob = make_client(), make_client()
    await alice.sign_up()
    bob_user = await bob.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        inbox = await socket.subscribe(INBOX)
        await wait_for_subscribers(server, user_channel(uuid.UUID(bob_user["id"])))
        result = await alice.data(
            'mutation($to: String!) { sendDirectMessage(to: $to, data: "hi bob") { roomId seq } }',
            {"to": bob_user["name"]},
        )
        announced = (await inbox.data())["inbox"]
    assert announced["roomId"] == result["sendDirectMessage"]["roomId"]
    assert (announced["seq"], announced["data"]) == (1, "hi bob")
    assert announced["sender"]["name"] == alice.user["name"]


async def test_inbox_delivers_to_every_device_including_the_senders_other_devices(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    alice_phone = make_client()
    await alice_phone.sign_in(alice.user["name"])  # type: ignore[index]
    alice_channel = user_channel(uuid.UUID(alice.user["id"]))  # type: ignore[index]
    async with (
        GraphQLWebSocket.connect(server.ws_url, cookie=alice_phone.session_cookie) as phone,
        GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as bob_socket,
    ):
        phone_inbox = await phone.subscribe(INBOX)
        bob_inbox = await bob_socket.subscribe(INBOX)
        await wait_for_subscribers(server, alice_channel)
        await wait_for_subscribers(server, user_channel(uuid.UUID(bob.user["id"])))  # type: ignore[index]
        for i in range(3):
            await send(alice, room_id, f"to all devices {i}")
        phone_seqs = [(await phone_inbox.data())["inbox"]["seq"] for _ in range(3)]
        bob_seqs = [(await bob_inbox.data())["inbox"]["seq"] for _ in range(3)]
    assert phone_seqs == bob_seqs == [1, 2, 3]


async def test_abrupt_disconnect_leaves_no_subscription_or_task_behind(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    channel = room_channel(uuid.UUID(room_id))
    baseline_subscribers = subscription_total(server)
    baseline_tasks = asyncio.all_tasks()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        for _ in range(5):
            await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await socket.subscribe(INBOX)
        await wait_for_subscribers(server, channel, 5)
        await wait_for_subscribers(server, user_channel(uuid.UUID(bob.user["id"])))  # type: ignore[index]
        keys = server.app.state.chat.keys
        bob_session = uuid.UUID(read_token(bob.session_cookie, keys=keys).session_id)
        await wait_for_subscribers(server, session_channel(bob_session))
        # Five room streams, the inbox, and the watcher that closes the socket at sign-out.
        assert subscription_total(server) == baseline_subscribers + 7
        # Drop the TCP connection without a close frame, like a phone losing its network.
        socket.connection.transport.abort()
        await wait_for_no_subscribers(server, channel)
    await wait_for_no_subscribers(server, user_channel(uuid.UUID(bob.user["id"])))  # type: ignore[index]
    # The session watcher ends with the connection, a moment after the operations.
    await wait_for_subscriber_total(server, baseline_subscribers)
    assert subscription_total(server) == baseline_subscribers
    assert subscriptions_on(server, channel) == 0
    # Every task the connection started (reader, operations) ends on its own.
    leftover = asyncio.all_tasks() - baseline_tasks - {asyncio.current_task()}
    if leftover:
        _, pending = await asyncio.wait(leftover, timeout=5)
        assert not pending, pending
    # And the server still serves.
    await send(alice, room_id, "still alive")


async def test_completing_a_subscription_unsubscribes_its_channel(
    server: RunningServer, make_client
) -> None:
    _, bob, room_id = await two_users(make_client)
    channel = room_channel(uuid.UUID(room_id))
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, channel)
        await follow.stop()
        await wait_for_no_subscribers(server, channel)
    assert subscriptions_on(server, channel) == 0


async def test_a_query_over_the_legacy_protocol_is_a_client_error_not_an_internal_one(
    server: RunningServer, make_client
) -> None:
    client = make_client()
    await client.sign_up()
    async with GraphQLWebSocket.connect(
        server.ws_url, cookie=client.session_cookie, protocol="graphql-ws"
    ) as socket:
        operation = await socket.subscribe("query { me { name } }")
        message = await operation.next_message()
    errors = message["payload"]["errors"] if message["type"] == "data" else [message["payload"]]
    assert errors[0]["extensions"]["code"] == "BAD_REQUEST", message


async def test_a_subscription_sent_by_plain_post_is_refused_clearly(make_client) -> None:
    client = make_client()
    await client.sign_up()
    response = await client.http.post("/graphql", json={"query": INBOX})
    assert response.status_code == 400
    assert "subscriptions are not allowed" in response.text


async def test_a_resume_cursor_past_the_last_message_is_bad_user_input(
    server: RunningServer, make_client
) -> None:
    alice, bob, room_id = await two_users(make_client)
    await send(alice, room_id, "only one")
    beyond = encode_message_cursor(uuid.UUID(room_id), 1000)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id, "after": beyond})
        message = await follow.next_message()
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(
    "document",
    [
        'mutation { signIn(name: "someone", password: "whatever1") { expiresAt } }',
        'mutation { signUp(name: "someone_new", password: "whatever1") { expiresAt } }',
        "mutation { refreshToken { expiresAt } }",
    ],
)
async def test_cookie_setting_mutations_over_a_socket_are_refused_and_change_nothing(
    server: RunningServer, make_client, document: str
) -> None:
    client = make_client()
    await client.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        operation = await socket.subscribe(document)
        message = await operation.next_message()
    errors = message["payload"]["errors"] if message["type"] == "next" else message["payload"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    # The browser's cookie still works: nothing rotated it behind its back.
    assert (await client.data("query { me { name } }"))["me"] is not None


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_live_room_subscriptions_hold_no_task_of_their_own(
    server: RunningServer, make_client, protocol: str
) -> None:
    """The hub serves messageAdded without a strawberry operation: twenty subscriptions on a
    socket add no task once they are live (memory per subscription stays small)."""
    alice, bob, room_id = await two_users(make_client)
    channel = room_channel(uuid.UUID(room_id))
    async with GraphQLWebSocket.connect(
        server.ws_url, cookie=bob.session_cookie, protocol=protocol
    ) as socket:
        first = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, channel)
        await send(alice, room_id, "warm")
        assert (await first.data())["messageAdded"]["data"] == "warm"
        before = len(asyncio.all_tasks())
        follows = [await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id}) for _ in range(20)]
        await wait_for_subscribers(server, channel, 21)
        await send(alice, room_id, "to all")
        for follow in [first, *follows]:
            assert (await follow.data())["messageAdded"]["data"] == "to all"
        assert len(asyncio.all_tasks()) - before < 5
