"""Read positions, unread counts, typing and presence: live, ephemeral state beside the log."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api.chat import store
from api.chat.signals import LISTENER_QUEUE, READ, Listener, SignalView
from api.users.views import UserView
from tests.chat.conftest import SignUp, name_of
from tests.chat.test_groups import CREATE, REMOVE
from tests.chat.test_log import DELETE
from tests.conftest import make_settings
from tests.support import (
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    Subscription,
    captured_statements,
    open_direct_room,
    running_server,
    send,
)

MARK_READ = """
mutation Read($roomId: ID!, $cursor: String!) {
  markRead(roomId: $roomId, cursor: $cursor) {
    readCursor unreadCount memberships { user { name } readSeq }
  }
}
"""
ROOM = """
query Room($id: ID!) {
  room(id: $id) { readCursor unreadCount memberships { user { name } readSeq } }
}
"""
ROOMS = "query { rooms(first: 20) { edges { node { id unreadCount readCursor } } } }"
TYPING = (
    "mutation T($roomId: ID!, $typing: Boolean!) { setTyping(roomId: $roomId, typing: $typing) }"
)
SIGNALS = """
subscription Signals($roomId: ID!) {
  roomSignals(roomId: $roomId) {
    __typename
    ... on Typing { roomId user { name } typing }
    ... on Presence { roomId user { name } online }
    ... on ReadPosition { roomId user { name } seq cursor }
  }
}
"""


def code(error: dict[str, Any]) -> str:
    value: str = error["extensions"]["code"]
    return value


def me(room: dict[str, Any], name: str) -> int:
    (seq,) = [m["readSeq"] for m in room["memberships"] if m["user"]["name"] == name]
    return int(seq)


async def direct(sign_up: SignUp) -> tuple[GraphQLClient, GraphQLClient, str]:
    alice, bob = await sign_up(), await sign_up()
    return alice, bob, await open_direct_room(alice, name_of(bob))


async def signal(stream: Subscription, timeout: float = 5) -> dict[str, Any]:
    data: dict[str, Any] = (await stream.data(timeout=timeout))["roomSignals"]
    return data


def summary(signal: dict[str, Any]) -> tuple[str, str, Any]:
    kind = signal["__typename"]
    value = {"Typing": "typing", "Presence": "online", "ReadPosition": "seq"}[kind]
    return kind, signal["user"]["name"], signal[value]


async def no_signal(stream: Subscription, within: float) -> None:
    with pytest.raises(TimeoutError):
        await stream.next_message(timeout=within)


# --- read positions and unread counts ---------------------------------------------------------


async def test_mark_read_moves_forward_never_back_and_counts_what_is_left(
    sign_up: SignUp,
) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = [await send(alice, room_id, f"m{i}") for i in range(5)]
    await send(bob, room_id, "mine")  # not unread for bob
    before = (await bob.data(ROOM, {"id": room_id}))["room"]
    assert (before["readCursor"], before["unreadCount"], me(before, name_of(bob))) == (None, 5, 0)
    read = (await bob.data(MARK_READ, {"roomId": room_id, "cursor": sent[2]["cursor"]}))["markRead"]
    assert (read["readCursor"], read["unreadCount"], me(read, name_of(bob))) == (
        sent[2]["cursor"],
        2,
        3,
    )
    back = (await bob.data(MARK_READ, {"roomId": room_id, "cursor": sent[0]["cursor"]}))["markRead"]
    assert (back["readCursor"], me(back, name_of(bob))) == (sent[2]["cursor"], 3)
    # Deleted messages are not unread; others see bob's read position (receipts).
    await alice.data(DELETE, {"id": sent[4]["id"]})
    assert (await bob.data(ROOM, {"id": room_id}))["room"]["unreadCount"] == 1
    assert me((await alice.data(ROOM, {"id": room_id}))["room"], name_of(bob)) == 3


async def test_mark_read_refuses_other_rooms_cursors_and_outsiders(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    carol = await sign_up()
    other_room = await open_direct_room(alice, name_of(carol))
    elsewhere = await send(alice, other_room, "elsewhere")
    here = await send(alice, room_id, "here")
    assert code(await bob.error(MARK_READ, {"roomId": room_id, "cursor": elsewhere["cursor"]})) == (
        "BAD_USER_INPUT"
    )
    assert code(await bob.error(MARK_READ, {"roomId": room_id, "cursor": "garbage"})) == (
        "BAD_USER_INPUT"
    )
    assert code(await carol.error(MARK_READ, {"roomId": room_id, "cursor": here["cursor"]})) == (
        "FORBIDDEN"
    )


async def test_unread_counts_stop_at_the_cap(server: RunningServer, sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    for i in range(4):
        await send(alice, room_id, f"m{i}")
    db = server.app.state.chat.db
    bob_id = uuid.UUID(bob.user["id"])  # type: ignore[index]
    room = uuid.UUID(room_id)
    counts = await store.unread_counts(db, user_id=bob_id, read_seqs={room: 0}, cap=3)
    assert counts == {room: 3}
    counts = await store.unread_counts(db, user_id=bob_id, read_seqs={room: 2}, cap=3)
    assert counts == {room: 2}


async def test_rooms_with_unread_counts_for_20_rooms_take_at_most_2_statements(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice = await sign_up()
    for _ in range(20):
        other = await sign_up()
        await send(other, await open_direct_room(other, name_of(alice)), "hi")
    db = server.app.state.chat.db
    await alice.data(ROOMS)  # users warm in the directory, as they are in a running server
    with captured_statements(db) as statements:
        edges = (await alice.data(ROOMS))["rooms"]["edges"]
    assert len(edges) == 20
    assert {edge["node"]["unreadCount"] for edge in edges} == {1}
    reads = [s for s, _ in statements if not s.lstrip().upper().startswith(("BEGIN", "COMMIT"))]
    unread = [s for s in reads if "unread" in s]
    assert len(unread) == 1, reads  # every room's count in one statement
    assert len(reads) == 2, reads  # the page of rooms, and their counts


async def test_a_burst_of_mark_reads_writes_at_most_once_a_second_and_the_last_wins(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = [await send(alice, room_id, f"m{i}") for i in range(10)]
    reads = server.app.state.chat.reads
    writes = reads.writes
    started = time.monotonic()
    for message in sent:
        await bob.data(MARK_READ, {"roomId": room_id, "cursor": message["cursor"]})
    burst = time.monotonic() - started
    # One write per started second of the burst at most (the first at once, the rest wait for
    # their second to end), not one per call: 10 calls.
    assert reads.writes - writes <= int(burst) + 1 < len(sent), (reads.writes - writes, burst)
    # The latest position is what the room shows now, and what is stored a second later.
    assert me((await bob.data(ROOM, {"id": room_id}))["room"], name_of(bob)) == 10
    row = None
    for _ in range(40):
        row = await store.room(server.app.state.chat.db, room_id=uuid.UUID(room_id))
        assert row is not None
        if next(m.read_seq for m in row.members if str(m.user_id) == bob.user["id"]) == 10:  # type: ignore[index]
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the last position was never written: {row}")


async def test_a_graceful_stop_writes_the_read_positions_not_yet_written(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, broadcast_url, data_dir)
    async with running_server(settings, run_migrations=False) as server:
        alice, bob = GraphQLClient(server.url), GraphQLClient(server.url)
        await alice.sign_up()
        bob_name = (await bob.sign_up())["name"]
        room_id = await open_direct_room(alice, bob_name)
        sent = [await send(alice, room_id, f"m{i}") for i in range(3)]
        for message in sent:
            await bob.data(MARK_READ, {"roomId": room_id, "cursor": message["cursor"]})
        pending = server.app.state.chat.reads.pending(uuid.UUID(room_id), uuid.UUID(bob.user["id"]))  # type: ignore[index]
        for client in (alice, bob):
            await client.aclose()
    async with running_server(settings, run_migrations=False) as again:
        row = await store.room(again.app.state.chat.db, room_id=uuid.UUID(room_id))
        assert row is not None
        stored = next(m.read_seq for m in row.members if str(m.user_id) == bob.user["id"])  # type: ignore[index]
    assert stored == 3, f"pending before the stop: {pending}"


# --- roomSignals: read positions, typing, presence ----------------------------------------------


async def test_read_positions_reach_the_room_and_the_reader_s_other_devices(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "read me")
    bob_phone = GraphQLClient(server.url)
    await bob_phone.sign_in(name_of(bob))
    try:
        async with (
            GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as a,
            GraphQLWebSocket.connect(server.ws_url, cookie=bob_phone.session_cookie) as b,
        ):
            streams = [
                await a.subscribe(SIGNALS, {"roomId": room_id}),
                await b.subscribe(SIGNALS, {"roomId": room_id}),
            ]
            for stream in streams:  # the current state: both online
                assert {summary(await signal(stream)) for _ in range(2)} == {
                    ("Presence", name_of(alice), True),
                    ("Presence", name_of(bob), True),
                }
            await bob.data(MARK_READ, {"roomId": room_id, "cursor": sent["cursor"]})
            for stream in streams:
                moved = await signal(stream)
                assert summary(moved) == ("ReadPosition", name_of(bob), sent["seq"])
                assert moved["cursor"] == sent["cursor"]
    finally:
        await bob_phone.aclose()


async def test_typing_starts_renews_quietly_stops_and_lapses(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        assert summary(await signal(stream)) == ("Presence", name_of(alice), True)
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        assert summary(await signal(stream)) == ("Typing", name_of(bob), True)
        # A renewal inside the second sends nothing.
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        await bob.data(TYPING, {"roomId": room_id, "typing": False})
        # A stop right after a start goes out when the second is over.
        assert summary(await signal(stream, timeout=3)) == ("Typing", name_of(bob), False)
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        started = time.monotonic()
        assert summary(await signal(stream)) == ("Typing", name_of(bob), True)
        assert summary(await signal(stream, timeout=10)) == ("Typing", name_of(bob), False)
        lapsed = time.monotonic() - started
    assert 5 <= lapsed <= 7, lapsed


async def test_a_new_subscriber_sees_who_is_typing_and_who_is_online_first(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie):
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
            stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
            first = {summary(await signal(stream)) for _ in range(3)}
    assert first == {
        ("Presence", name_of(alice), True),
        ("Presence", name_of(bob), True),
        ("Typing", name_of(bob), True),
    }


async def test_presence_goes_offline_only_when_the_last_socket_closes_and_flapping_is_quiet(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        assert summary(await signal(stream)) == ("Presence", name_of(alice), True)
        async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie):
            assert summary(await signal(stream)) == ("Presence", name_of(bob), True)
            async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie):
                pass  # a second device comes and goes: bob stays online
        # bob's last socket closed; reconnecting within 2 s is no change at all.
        async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie):
            await no_signal(stream, 2.5)
        started = time.monotonic()
        assert summary(await signal(stream, timeout=5)) == ("Presence", name_of(bob), False)
        assert time.monotonic() - started >= 1.5  # debounced


async def test_presence_is_seen_only_in_rooms_shared_with_that_user(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, _, room_id = await direct(sign_up)
    carol = await sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        assert summary(await signal(stream)) == ("Presence", name_of(alice), True)
        async with GraphQLWebSocket.connect(server.ws_url, cookie=carol.session_cookie):
            await no_signal(stream, 1)


async def test_outsiders_get_no_signals_and_cannot_type(
    server: RunningServer, sign_up: SignUp
) -> None:
    _, _, room_id = await direct(sign_up)
    eve = await sign_up()
    assert code(await eve.error(TYPING, {"roomId": room_id, "typing": True})) == "FORBIDDEN"
    async with GraphQLWebSocket.connect(server.ws_url, cookie=eve.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        result = await stream.next()
        assert code(result["errors"][0]) == "FORBIDDEN"


async def test_a_removed_member_s_signals_end_with_forbidden(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob = await sign_up(), await sign_up()
    room_id = (await alice.data(CREATE, {"name": "g", "members": [name_of(bob)]}))["createRoom"][
        "id"
    ]
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        assert summary(await signal(stream)) == ("Presence", name_of(bob), True)
        await server.app.state.chat.pubsub.wait_for_subscribers(f"room:{room_id}")
        await alice.data(REMOVE, {"roomId": room_id, "name": name_of(bob)})
        result = await stream.next()
        assert code(result["errors"][0]) == "FORBIDDEN"


async def test_a_slow_subscriber_loses_its_oldest_signals_not_the_server_s_memory() -> None:
    listener = Listener(uuid.uuid4(), uuid.uuid4())
    who = UserView(id=uuid.uuid4(), name="x", created_at=datetime.now(UTC))
    for seq in range(LISTENER_QUEUE + 10):
        listener.put(SignalView(READ, listener.room_id, who, seq=seq))
    first = await listener.get()
    assert first is not None and first.seq == 10
    assert listener.dropped == 10


async def test_room_signals_are_written_by_the_hub_and_also_work_through_strawberry(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    hub = server.app.state.chat.hub
    # A fragment at the root keeps the operation with strawberry (a queue per subscriber);
    # the plain document is served by the hub's writer.
    body = SIGNALS[SIGNALS.index("roomSignals") : SIGNALS.rindex("}")]
    with_fragment = (
        f"subscription Signals($roomId: ID!) {{ ...S }}\nfragment S on Subscription {{ {body} }}"
    )
    async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
        before = hub.signal_sinks
        served = await socket.subscribe(SIGNALS, {"roomId": room_id})
        queued = await socket.subscribe(with_fragment, {"roomId": room_id})
        for stream in (served, queued):
            assert summary(await signal(stream)) == ("Presence", name_of(alice), True)
        assert hub.signal_sinks == before + 1
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        for stream in (served, queued):
            assert summary(await signal(stream)) == ("Typing", name_of(bob), True)
        await served.stop()
        await asyncio.wait_for(_until_signal_sinks(hub, before), 5)
    assert hub.signal_sinks == before


async def _until_signal_sinks(hub: Any, count: int) -> None:
    while hub.signal_sinks != count:
        event = hub.changes.event
        if hub.signal_sinks == count:
            return
        await event.wait()


async def test_sending_a_message_ends_the_sender_s_typing_state(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    async with GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as socket:
        stream = await socket.subscribe(SIGNALS, {"roomId": room_id})
        assert summary(await signal(stream)) == ("Presence", name_of(alice), True)
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        assert summary(await signal(stream)) == ("Typing", name_of(bob), True)
        await send(bob, room_id, "done typing")
        # Well before the 6 s lapse (at most the 1 s signal window).
        assert summary(await signal(stream, timeout=3)) == ("Typing", name_of(bob), False)
        # Typing again is news again.
        await bob.data(TYPING, {"roomId": room_id, "typing": True})
        assert summary(await signal(stream, timeout=3)) == ("Typing", name_of(bob), True)
