"""The room log: edits, tombstone deletes and reactions, each one entry (or none when nothing
changes); roomEvents paging; live streams that stay exactly-once and in order while entries of
every kind interleave; Reaction.me per viewer under shared fan-out."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from api.chat.constants import room_channel
from tests.chat.conftest import SignUp, name_of
from tests.chat.test_groups import CREATE, EVENTS, log
from tests.support import (
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    assert_exactly_once_in_order,
    open_direct_room,
    send,
    wait_for_subscribers,
)

MESSAGE_FIELDS = "id seq data editedAt deletedAt reactions { emoji count me }"
EDIT = f"""
mutation Edit($id: ID!, $data: String!) {{
  editMessage(messageId: $id, data: $data) {{ {MESSAGE_FIELDS} }}
}}
"""
DELETE = f"mutation Delete($id: ID!) {{ deleteMessage(messageId: $id) {{ {MESSAGE_FIELDS} }} }}"
REACT = f"""
mutation React($id: ID!, $emoji: String!) {{
  addReaction(messageId: $id, emoji: $emoji) {{ {MESSAGE_FIELDS} }}
}}
"""
UNREACT = f"""
mutation Unreact($id: ID!, $emoji: String!) {{
  removeReaction(messageId: $id, emoji: $emoji) {{ {MESSAGE_FIELDS} }}
}}
"""
HISTORY = f"""
query History($roomId: ID!, $first: Int, $after: String, $last: Int, $before: String) {{
  messages(roomId: $roomId, first: $first, after: $after, last: $last, before: $before) {{
    edges {{ cursor node {{ {MESSAGE_FIELDS} }} }}
    pageInfo {{ hasNextPage hasPreviousPage }}
  }}
}}
"""
LAST_MESSAGE = "query Room($id: ID!) { room(id: $id) { lastSeq lastMessage { data } } }"
LOG_KINDS = """
subscription Log($roomId: ID!, $after: String) {
  roomEvents(roomId: $roomId, after: $after) {
    __typename seq cursor
    ... on MessagePosted { message { id data } }
    ... on MessageEdited { message { id data editedAt } }
    ... on MessageDeleted { messageId }
    ... on ReactionAdded { messageId emoji }
    ... on ReactionRemoved { messageId emoji }
  }
}
"""
POSTED_REACTIONS = """
subscription Mine($roomId: ID!) {
  roomEvents(roomId: $roomId) {
    seq ... on MessageEdited { message { reactions { emoji count me } } }
  }
}
"""


def code(error: dict[str, Any]) -> str:
    value: str = error["extensions"]["code"]
    return value


async def direct(sign_up: SignUp) -> tuple[GraphQLClient, GraphQLClient, str]:
    alice, bob = await sign_up(), await sign_up()
    return alice, bob, await open_direct_room(alice, name_of(bob))


# --- edits ------------------------------------------------------------------------------------


async def test_the_sender_edits_a_message_and_the_log_records_it(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "helo")
    edited = (await alice.data(EDIT, {"id": sent["id"], "data": "hello"}))["editMessage"]
    assert (edited["seq"], edited["data"]) == (1, "hello")
    assert edited["editedAt"] is not None
    entries = await log(bob, room_id)
    assert [(e["__typename"], e["seq"]) for e in entries] == [
        ("MessagePosted", 1),
        ("MessageEdited", 2),
    ]
    # "message" is the message as it is now, in both entries.
    assert [e["message"]["data"] for e in entries if "message" in e] == ["hello"]
    # The same data again changes nothing.
    again = (await alice.data(EDIT, {"id": sent["id"], "data": "hello"}))["editMessage"]
    assert again["editedAt"] == edited["editedAt"]
    assert len(await log(bob, room_id)) == 2


async def test_edit_rules(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    eve = await sign_up()
    sent = await send(alice, room_id, "mine")
    assert code(await bob.error(EDIT, {"id": sent["id"], "data": "x"})) == "FORBIDDEN"
    assert code(await eve.error(EDIT, {"id": sent["id"], "data": "x"})) == "FORBIDDEN"
    assert code(await alice.error(EDIT, {"id": sent["id"], "data": ""})) == "BAD_USER_INPUT"
    assert code(await alice.error(EDIT, {"id": sent["id"], "data": "a\u0000"})) == "BAD_USER_INPUT"
    assert code(await alice.error(EDIT, {"id": "abc", "data": "x"})) == "BAD_USER_INPUT"
    assert code(await alice.error(EDIT, {"id": "999999999999", "data": "x"})) == "NOT_FOUND"
    await alice.data(DELETE, {"id": sent["id"]})
    assert code(await alice.error(EDIT, {"id": sent["id"], "data": "x"})) == "BAD_USER_INPUT"


# --- deletes ----------------------------------------------------------------------------------


async def test_a_delete_leaves_a_tombstone_once_and_last_message_skips_it(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    first = await send(alice, room_id, "first")
    second = await send(bob, room_id, "second")
    await bob.data(REACT, {"id": second["id"], "emoji": "👍"})
    deleted = (await bob.data(DELETE, {"id": second["id"]}))["deleteMessage"]
    assert (deleted["data"], deleted["reactions"]) == ("", [])
    assert deleted["deletedAt"] is not None
    again = (await bob.data(DELETE, {"id": second["id"]}))["deleteMessage"]
    assert again["deletedAt"] == deleted["deletedAt"]
    entries = await log(alice, room_id)
    assert [e["__typename"] for e in entries] == [
        "MessagePosted",
        "MessagePosted",
        "ReactionAdded",
        "MessageDeleted",
    ]
    history = (await alice.data(HISTORY, {"roomId": room_id}))["messages"]["edges"]
    assert [(e["node"]["seq"], e["node"]["data"]) for e in history] == [(1, "first"), (2, "")]
    room = (await alice.data(LAST_MESSAGE, {"id": room_id}))["room"]
    assert room == {"lastSeq": 4, "lastMessage": {"data": first["data"]}}


async def test_only_the_sender_or_a_group_owner_or_admin_deletes(sign_up: SignUp) -> None:
    alice, bob, carol = await sign_up(), await sign_up(), await sign_up()
    room = (await alice.data(CREATE, {"name": "g", "members": [name_of(bob), name_of(carol)]}))[
        "createRoom"
    ]
    by_bob = await send(bob, room["id"], "bob's")
    assert code(await carol.error(DELETE, {"id": by_bob["id"]})) == "FORBIDDEN"
    assert (await alice.data(DELETE, {"id": by_bob["id"]}))["deleteMessage"]["deletedAt"]
    # In a direct room the other member may not delete.
    first, second, room_id = await direct(sign_up)
    sent = await send(first, room_id, "x")
    assert code(await second.error(DELETE, {"id": sent["id"]})) == "FORBIDDEN"


# --- reactions --------------------------------------------------------------------------------


async def test_reactions_are_idempotent_in_first_use_order_and_me_is_per_viewer(
    sign_up: SignUp,
) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "react to me")
    await bob.data(REACT, {"id": sent["id"], "emoji": "🎉"})
    await alice.data(REACT, {"id": sent["id"], "emoji": "👍"})
    twice = (await alice.data(REACT, {"id": sent["id"], "emoji": "👍"}))["addReaction"]
    both = (await bob.data(REACT, {"id": sent["id"], "emoji": "👍"}))["addReaction"]
    assert twice["reactions"] == [
        {"emoji": "🎉", "count": 1, "me": False},
        {"emoji": "👍", "count": 1, "me": True},
    ]
    assert both["reactions"] == [
        {"emoji": "🎉", "count": 1, "me": True},
        {"emoji": "👍", "count": 2, "me": True},
    ]
    # The room list and the room show them the same, in the same order.
    listed = await alice.data(
        "query { rooms { edges { node { lastMessage { reactions { emoji count me } } } } } }"
    )
    (edge,) = listed["rooms"]["edges"]
    assert edge["node"]["lastMessage"]["reactions"] == [
        {"emoji": "🎉", "count": 1, "me": False},
        {"emoji": "👍", "count": 2, "me": True},
    ]
    gone = (await bob.data(UNREACT, {"id": sent["id"], "emoji": "🎉"}))["removeReaction"]
    nothing = (await bob.data(UNREACT, {"id": sent["id"], "emoji": "🎉"}))["removeReaction"]
    assert gone["reactions"] == nothing["reactions"] == [{"emoji": "👍", "count": 2, "me": True}]
    kinds = [e["__typename"] for e in await log(alice, room_id)]
    assert kinds == [
        "MessagePosted",
        "ReactionAdded",
        "ReactionAdded",
        "ReactionAdded",
        "ReactionRemoved",
    ]


@pytest.mark.parametrize("emoji", ["", "x" * 33, "a b", "\u0007", "\u202e", "\n"])
async def test_a_reaction_must_be_short_with_no_whitespace_or_control_characters(
    sign_up: SignUp, emoji: str
) -> None:
    alice, _, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "x")
    assert code(await alice.error(REACT, {"id": sent["id"], "emoji": emoji})) == "BAD_USER_INPUT"


async def test_emoji_sequences_are_one_reaction(sign_up: SignUp) -> None:
    alice, _, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "x")
    family, flag = (
        "👨\u200d👩\u200d👧",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    )
    await alice.data(REACT, {"id": sent["id"], "emoji": family})
    reacted = (await alice.data(REACT, {"id": sent["id"], "emoji": flag}))["addReaction"]
    assert [r["emoji"] for r in reacted["reactions"]] == [family, flag]


async def test_at_most_twenty_distinct_reactions_per_user_per_message(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "x")
    for n in range(20):
        await alice.data(REACT, {"id": sent["id"], "emoji": f":r{n}:"})
    assert code(await alice.error(REACT, {"id": sent["id"], "emoji": ":r20:"})) == "BAD_USER_INPUT"
    # Others still may, and the same one again is no error.
    await bob.data(REACT, {"id": sent["id"], "emoji": ":r20:"})
    await alice.data(REACT, {"id": sent["id"], "emoji": ":r0:"})


async def test_outsiders_and_tombstones_take_no_reactions(sign_up: SignUp) -> None:
    alice, _, room_id = await direct(sign_up)
    eve = await sign_up()
    sent = await send(alice, room_id, "x")
    assert code(await eve.error(REACT, {"id": sent["id"], "emoji": "👍"})) == "FORBIDDEN"
    await alice.data(DELETE, {"id": sent["id"]})
    assert code(await alice.error(REACT, {"id": sent["id"], "emoji": "👍"})) == "BAD_USER_INPUT"


# --- paging the log, and one cursor for both -------------------------------------------------


async def test_room_events_pages_like_messages_and_cursors_work_in_both(sign_up: SignUp) -> None:
    alice, bob, room_id = await direct(sign_up)
    ids = [(await send(alice, room_id, f"m{i}"))["id"] for i in range(6)]
    for message_id in ids[::2]:
        await bob.data(REACT, {"id": message_id, "emoji": "👍"})
    # seqs: m0=1 m1=2 m2=3 m3=4 m4=5 m5=6, reactions 7 8 9
    page = (await alice.data(EVENTS, {"roomId": room_id, "first": 4}))["roomEvents"]
    assert [e["node"]["seq"] for e in page["edges"]] == [1, 2, 3, 4]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = (
        await alice.data(
            EVENTS, {"roomId": room_id, "first": 10, "after": page["pageInfo"]["endCursor"]}
        )
    )["roomEvents"]
    assert [e["node"]["seq"] for e in rest["edges"]] == [5, 6, 7, 8, 9]
    assert rest["pageInfo"]["hasNextPage"] is False
    newest = (await alice.data(EVENTS, {"roomId": room_id, "last": 2}))["roomEvents"]
    assert [e["node"]["seq"] for e in newest["edges"]] == [8, 9]
    assert newest["pageInfo"]["hasPreviousPage"] is True
    older = (
        await alice.data(
            EVENTS, {"roomId": room_id, "last": 3, "before": newest["pageInfo"]["startCursor"]}
        )
    )["roomEvents"]
    assert [e["node"]["seq"] for e in older["edges"]] == [5, 6, 7]
    # A reaction's cursor pages messages; a message's cursor pages the log.
    reaction_cursor = newest["edges"][0]["cursor"]  # seq 8
    before = (await alice.data(HISTORY, {"roomId": room_id, "last": 2, "before": reaction_cursor}))[
        "messages"
    ]
    assert [e["node"]["seq"] for e in before["edges"]] == [5, 6]
    assert before["pageInfo"]["hasPreviousPage"] is True
    message_cursor = before["edges"][0]["cursor"]  # seq 5
    after = (await alice.data(EVENTS, {"roomId": room_id, "first": 2, "after": message_cursor}))[
        "roomEvents"
    ]
    assert [e["node"]["seq"] for e in after["edges"]] == [6, 7]
    # History skips other entries and still pages in full pages.
    messages = (
        await alice.data(HISTORY, {"roomId": room_id, "first": 3, "after": message_cursor})
    )["messages"]
    assert [e["node"]["seq"] for e in messages["edges"]] == [6]
    assert messages["pageInfo"]["hasNextPage"] is False


@pytest.mark.parametrize(
    "variables",
    [{"first": -1}, {"first": 101}, {"first": 1, "last": 1}, {"after": "not-a-cursor"}],
)
async def test_room_events_refuses_bad_paging_arguments(
    sign_up: SignUp, variables: dict[str, Any]
) -> None:
    alice, _, room_id = await direct(sign_up)
    assert code(await alice.error(EVENTS, {"roomId": room_id, **variables})) == "BAD_USER_INPUT"


async def test_room_events_of_a_room_that_does_not_exist_is_not_found(sign_up: SignUp) -> None:
    alice = await sign_up()
    assert code(await alice.error(EVENTS, {"roomId": str(uuid.uuid4())})) == "NOT_FOUND"


# --- live ------------------------------------------------------------------------------------


async def test_message_added_skips_other_entries_and_resumes_by_any_cursor(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    first = await send(alice, room_id, "one")  # seq 1
    await bob.data(REACT, {"id": first["id"], "emoji": "👍"})  # seq 2
    reaction_cursor = (await log(alice, room_id))[-1]["cursor"]
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        live = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        resumed = await socket.subscribe(
            MESSAGE_ADDED, {"roomId": room_id, "after": reaction_cursor}
        )
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 2)
        await alice.data(EDIT, {"id": first["id"], "data": "one!"})  # seq 3
        await send(alice, room_id, "two")  # seq 4
        await bob.data(REACT, {"id": first["id"], "emoji": "🎉"})  # seq 5
        await send(alice, room_id, "three")  # seq 6
        for stream in (live, resumed):
            got = [(await stream.data())["messageAdded"] for _ in range(2)]
            assert [(m["seq"], m["data"]) for m in got] == [(4, "two"), (6, "three")]


async def test_room_events_streams_every_kind_after_a_cursor_then_live(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    first = await send(alice, room_id, "one")  # 1
    await bob.data(REACT, {"id": first["id"], "emoji": "👍"})  # 2
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        stream = await socket.subscribe(LOG_KINDS, {"roomId": room_id, "after": first["cursor"]})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)))
        await alice.data(EDIT, {"id": first["id"], "data": "one!"})  # 3
        await bob.data(UNREACT, {"id": first["id"], "emoji": "👍"})  # 4
        await alice.data(DELETE, {"id": first["id"]})  # 5
        got = [(await stream.data())["roomEvents"] for _ in range(4)]
    assert [(e["__typename"], e["seq"]) for e in got] == [
        ("ReactionAdded", 2),
        ("MessageEdited", 3),
        ("ReactionRemoved", 4),
        ("MessageDeleted", 5),
    ]
    assert got[1]["message"]["data"] == "one!"
    assert {e.get("messageId", first["id"]) for e in got} == {first["id"]}


async def test_reaction_me_is_right_for_every_subscriber_of_a_shared_event(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, room_id = await direct(sign_up)
    sent = await send(alice, room_id, "x")
    await bob.data(REACT, {"id": sent["id"], "emoji": "👍"})
    async with (
        GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as alice_socket,
        GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as bob_socket,
    ):
        streams = {
            "alice": await alice_socket.subscribe(POSTED_REACTIONS, {"roomId": room_id}),
            "bob": await bob_socket.subscribe(POSTED_REACTIONS, {"roomId": room_id}),
        }
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 2)
        await alice.data(EDIT, {"id": sent["id"], "data": "y"})
        seen = {who: (await s.data())["roomEvents"] for who, s in streams.items()}
    assert seen["alice"]["message"]["reactions"] == [{"emoji": "👍", "count": 1, "me": False}]
    assert seen["bob"]["message"]["reactions"] == [{"emoji": "👍", "count": 1, "me": True}]


async def test_three_writers_interleaving_every_kind_reach_each_subscriber_once_in_order(
    server: RunningServer, sign_up: SignUp
) -> None:
    """3 writers interleave 100 sends, edits and reactions on one room while 2 subscribers
    follow roomEvents and 1 messageAdded: 1..N once each, in order; every message once."""
    alice, bob, carol = await sign_up(), await sign_up(), await sign_up()
    room = (await alice.data(CREATE, {"name": "busy", "members": [name_of(bob), name_of(carol)]}))[
        "createRoom"
    ]
    room_id, start = room["id"], room["lastSeq"]
    per_writer = 34
    log_seqs: list[list[int]] = [[], []]
    message_seqs: list[int] = []
    posted: list[int] = []

    async def writer(client: GraphQLClient, tag: str) -> None:
        mine: list[str] = []
        for i in range(per_writer):
            if i % 3 == 0 or not mine:
                sent = await send(client, room_id, f"{tag}{i}")
                mine.append(sent["id"])
                posted.append(sent["seq"])
            elif i % 3 == 1:
                await client.data(EDIT, {"id": mine[-1], "data": f"{tag}{i} edited"})
            else:
                await client.data(REACT, {"id": mine[0], "emoji": f":{tag}{i}:"})

    async with (
        GraphQLWebSocket.connect(server.ws_url, cookie=alice.session_cookie) as one,
        GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as two,
    ):
        logs = [
            await one.subscribe(LOG_KINDS, {"roomId": room_id}),
            await two.subscribe(LOG_KINDS, {"roomId": room_id}),
        ]
        messages = await two.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 3)
        await asyncio.gather(*(writer(c, t) for c, t in ((alice, "a"), (bob, "b"), (carol, "c"))))
        last = (await alice.data(EVENTS, {"roomId": room_id, "last": 1}))["roomEvents"]["edges"][0]
        total = last["node"]["seq"]
        posted.sort()
        for index, stream in enumerate(logs):
            while len(log_seqs[index]) < total - start:
                log_seqs[index].append((await stream.data(timeout=30))["roomEvents"]["seq"])
        while len(message_seqs) < len(posted):
            message_seqs.append((await messages.data(timeout=30))["messageAdded"]["seq"])
    assert total - start == 3 * per_writer
    for seqs in log_seqs:
        assert_exactly_once_in_order(seqs, start + 1, total)
    assert message_seqs == posted
