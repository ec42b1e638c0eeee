"""Group rooms: creation, membership and roles, renames, and the log entries each one appends;
a member removed loses the room at once, subscriptions included."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from api.chat.constants import room_channel
from tests.chat.conftest import SignUp, name_of
from tests.support import (
    MESSAGE_ADDED,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    open_direct_room,
    send,
    wait_for_subscribers,
)

ROOM_FIELDS = """
id kind name lastSeq createdAt
members { name }
memberships { user { name } role joinedAt }
lastMessage { seq data }
"""
CREATE = f"""
mutation Create($name: String!, $members: [String!]!) {{
  createRoom(name: $name, members: $members) {{ {ROOM_FIELDS} }}
}}
"""
ADD = f"""
mutation Add($roomId: ID!, $names: [String!]!) {{
  addMembers(roomId: $roomId, names: $names) {{ {ROOM_FIELDS} }}
}}
"""
REMOVE = f"""
mutation Remove($roomId: ID!, $name: String!) {{
  removeMember(roomId: $roomId, name: $name) {{ {ROOM_FIELDS} }}
}}
"""
LEAVE = "mutation Leave($roomId: ID!) { leaveRoom(roomId: $roomId) }"
SET_ROLE = f"""
mutation SetRole($roomId: ID!, $name: String!, $role: Role!) {{
  setRole(roomId: $roomId, name: $name, role: $role) {{ {ROOM_FIELDS} }}
}}
"""
RENAME = f"""
mutation Rename($roomId: ID!, $name: String!) {{
  renameRoom(roomId: $roomId, name: $name) {{ {ROOM_FIELDS} }}
}}
"""
ROOM = f"query Room($id: ID!) {{ room(id: $id) {{ {ROOM_FIELDS} }} }}"
ROOMS = "query Rooms { rooms { edges { node { id kind name } } } }"
EVENTS = """
query Events($roomId: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  roomEvents(roomId: $roomId, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node {
      __typename seq cursor roomId actor { name } createdAt
      ... on MemberJoined { member { name } role }
      ... on MemberLeft { member { name } }
      ... on RoleChanged { member { name } role }
      ... on RoomRenamed { name }
      ... on MessagePosted { message { seq data } }
    } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
ROOM_EVENTS = """
subscription Log($roomId: ID!, $after: String) {
  roomEvents(roomId: $roomId, after: $after) {
    __typename seq
    ... on MemberJoined { member { name } role }
    ... on MemberLeft { member { name } }
    ... on MessagePosted { message { data } }
  }
}
"""
INBOX_EVENTS = """
subscription {
  inboxEvents {
    __typename seq roomId
    ... on MemberJoined { member { name } }
    ... on MemberLeft { member { name } }
    ... on MessagePosted { message { data } }
  }
}
"""


async def users(sign_up: SignUp, count: int) -> list[GraphQLClient]:
    return [await sign_up() for _ in range(count)]


async def group(
    owner: GraphQLClient, *members: GraphQLClient, name: str = "team"
) -> dict[str, Any]:
    data = await owner.data(CREATE, {"name": name, "members": [name_of(m) for m in members]})
    room: dict[str, Any] = data["createRoom"]
    return room


async def log(client: GraphQLClient, room_id: str) -> list[dict[str, Any]]:
    data = await client.data(EVENTS, {"roomId": room_id, "first": 100})
    return [edge["node"] for edge in data["roomEvents"]["edges"]]


def code(error: dict[str, Any]) -> str:
    value: str = error["extensions"]["code"]
    return value


def roles(room: dict[str, Any]) -> dict[str, str]:
    return {m["user"]["name"]: m["role"] for m in room["memberships"]}


# --- createRoom -------------------------------------------------------------------------------


async def test_create_room_makes_the_caller_owner_and_logs_one_joined_entry_per_member(
    sign_up: SignUp,
) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room = await group(alice, bob, carol, bob, alice, name="Project X")
    assert room["kind"] == "GROUP"
    assert room["name"] == "Project X"
    assert room["lastSeq"] == 3
    assert room["lastMessage"] is None
    assert roles(room) == {
        name_of(alice): "OWNER",
        name_of(bob): "MEMBER",
        name_of(carol): "MEMBER",
    }
    entries = await log(alice, room["id"])
    assert [(e["__typename"], e["seq"], e["member"]["name"], e["role"]) for e in entries] == [
        ("MemberJoined", 1, name_of(alice), "OWNER"),
        ("MemberJoined", 2, name_of(bob), "MEMBER"),
        ("MemberJoined", 3, name_of(carol), "MEMBER"),
    ]
    assert {e["actor"]["name"] for e in entries} == {name_of(alice)}


@pytest.mark.parametrize(
    ("room_name", "members", "expected"),
    [
        ("", ["*"], "BAD_USER_INPUT"),
        ("x" * 101, ["*"], "BAD_USER_INPUT"),
        ("bad\nname", ["*"], "BAD_USER_INPUT"),
        ("   ", ["*"], "BAD_USER_INPUT"),
        ("ok", [], "BAD_USER_INPUT"),
        ("ok", ["me"], "BAD_USER_INPUT"),
        ("ok", ["*", "nobody-by-this-name"], "NOT_FOUND"),
    ],
)
async def test_create_room_refuses_bad_input(
    sign_up: SignUp, room_name: str, members: list[str], expected: str
) -> None:
    alice, bob = await users(sign_up, 2)
    names = [name_of(bob) if m == "*" else name_of(alice) if m == "me" else m for m in members]
    error = await alice.error(CREATE, {"name": room_name, "members": names})
    assert code(error) == expected


async def test_a_group_is_listed_in_rooms_from_its_creation_and_forbidden_to_outsiders(
    sign_up: SignUp,
) -> None:
    alice, bob, eve = await users(sign_up, 3)
    room = await group(alice, bob)
    for member in (alice, bob):
        listed = (await member.data(ROOMS))["rooms"]["edges"]
        assert [edge["node"]["id"] for edge in listed][:1] == [room["id"]]
        assert listed[0]["node"]["kind"] == "GROUP"
    assert code(await eve.error(ROOM, {"id": room["id"]})) == "FORBIDDEN"
    assert code(await eve.error(EVENTS, {"roomId": room["id"]})) == "FORBIDDEN"


# --- addMembers / removeMember / leaveRoom ----------------------------------------------------


async def test_an_admin_adds_members_and_names_already_in_the_room_are_ignored(
    sign_up: SignUp,
) -> None:
    alice, bob, carol, dave = await users(sign_up, 4)
    room = await group(alice, bob)
    await alice.data(SET_ROLE, {"roomId": room["id"], "name": name_of(bob), "role": "ADMIN"})
    added = (
        await bob.data(
            ADD, {"roomId": room["id"], "names": [name_of(carol), name_of(alice), name_of(dave)]}
        )
    )["addMembers"]
    assert roles(added)[name_of(carol)] == "MEMBER"
    assert roles(added)[name_of(dave)] == "MEMBER"
    entries = await log(alice, room["id"])
    joined = [(e["member"]["name"], e["actor"]["name"]) for e in entries[-2:]]
    assert joined == [(name_of(carol), name_of(bob)), (name_of(dave), name_of(bob))]
    # Nothing new: no entry.
    again = (await bob.data(ADD, {"roomId": room["id"], "names": [name_of(carol)]}))["addMembers"]
    assert again["lastSeq"] == added["lastSeq"]
    # The new member sees the room, its history included.
    assert (await carol.data(ROOM, {"id": room["id"]}))["room"]["id"] == room["id"]


async def test_add_members_rules(sign_up: SignUp) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room = await group(alice, bob)
    assert code(await bob.error(ADD, {"roomId": room["id"], "names": [name_of(carol)]})) == (
        "FORBIDDEN"
    )
    assert code(await alice.error(ADD, {"roomId": room["id"], "names": []})) == "BAD_USER_INPUT"
    assert code(await alice.error(ADD, {"roomId": room["id"], "names": ["no-such-user"]})) == (
        "NOT_FOUND"
    )
    assert code(await carol.error(ADD, {"roomId": room["id"], "names": [name_of(carol)]})) == (
        "FORBIDDEN"
    )
    assert code(
        await alice.error(ADD, {"roomId": str(uuid.uuid4()), "names": [name_of(carol)]})
    ) == ("NOT_FOUND")


async def test_a_room_never_grows_past_max_room_members(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob, carol, dave = await users(sign_up, 4)
    room = await group(alice, bob)
    settings = server.app.state.chat.settings
    limit = settings.max_room_members
    settings.max_room_members = 3
    try:
        error = await alice.error(
            ADD, {"roomId": room["id"], "names": [name_of(carol), name_of(dave)]}
        )
        assert code(error) == "BAD_USER_INPUT"
        await alice.data(ADD, {"roomId": room["id"], "names": [name_of(carol)]})
    finally:
        settings.max_room_members = limit
    assert len((await alice.data(ROOM, {"id": room["id"]}))["room"]["members"]) == 3


async def test_removal_rules_follow_the_roles(sign_up: SignUp) -> None:
    alice, bob, carol, dave = await users(sign_up, 4)
    room = await group(alice, bob, carol, dave)
    room_id = room["id"]
    await alice.data(SET_ROLE, {"roomId": room_id, "name": name_of(bob), "role": "ADMIN"})
    await alice.data(SET_ROLE, {"roomId": room_id, "name": name_of(carol), "role": "ADMIN"})
    # An ADMIN removes only MEMBERs; nobody removes the OWNER; a MEMBER removes nobody.
    assert code(await bob.error(REMOVE, {"roomId": room_id, "name": name_of(carol)})) == "FORBIDDEN"
    assert code(await bob.error(REMOVE, {"roomId": room_id, "name": name_of(alice)})) == "FORBIDDEN"
    assert code(await dave.error(REMOVE, {"roomId": room_id, "name": name_of(bob)})) == "FORBIDDEN"
    assert code(await alice.error(REMOVE, {"roomId": room_id, "name": name_of(alice)})) == (
        "FORBIDDEN"
    )
    removed = (await bob.data(REMOVE, {"roomId": room_id, "name": name_of(dave)}))["removeMember"]
    assert name_of(dave) not in roles(removed)
    # The OWNER removes an ADMIN.
    await alice.data(REMOVE, {"roomId": room_id, "name": name_of(carol)})
    entries = await log(alice, room_id)
    assert [(e["__typename"], e["member"]["name"], e["actor"]["name"]) for e in entries[-2:]] == [
        ("MemberLeft", name_of(dave), name_of(bob)),
        ("MemberLeft", name_of(carol), name_of(alice)),
    ]
    # Removed: FORBIDDEN from that moment, for reading and for sending.
    assert code(await dave.error(ROOM, {"id": room_id})) == "FORBIDDEN"
    body = await dave.post(
        'mutation($r: ID!) { sendMessage(roomId: $r, data: "x") { id } }', {"r": room_id}
    )
    assert code(body["errors"][0]) == "FORBIDDEN"
    assert code(await alice.error(REMOVE, {"roomId": room_id, "name": name_of(dave)})) == (
        "NOT_FOUND"
    )


async def test_an_owner_who_leaves_hands_ownership_to_the_longest_standing_admin(
    sign_up: SignUp,
) -> None:
    alice, bob, carol, dave = await users(sign_up, 4)
    room = await group(alice, bob, carol, dave)
    room_id = room["id"]
    await alice.data(SET_ROLE, {"roomId": room_id, "name": name_of(dave), "role": "ADMIN"})
    await alice.data(SET_ROLE, {"roomId": room_id, "name": name_of(carol), "role": "ADMIN"})
    assert (await alice.data(LEAVE, {"roomId": room_id}))["leaveRoom"] is True
    now = (await bob.data(ROOM, {"id": room_id}))["room"]
    # carol joined before dave: she is the longest-standing ADMIN.
    assert roles(now) == {name_of(bob): "MEMBER", name_of(carol): "OWNER", name_of(dave): "ADMIN"}
    entries = await log(bob, room_id)
    assert [(e["__typename"], e["member"]["name"]) for e in entries[-2:]] == [
        ("RoleChanged", name_of(carol)),
        ("MemberLeft", name_of(alice)),
    ]
    assert code(await alice.error(ROOM, {"id": room_id})) == "FORBIDDEN"
    assert code(await alice.error(LEAVE, {"roomId": room_id})) == "FORBIDDEN"


async def test_an_owner_without_admins_hands_ownership_to_the_longest_standing_member(
    sign_up: SignUp,
) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room = await group(alice, bob, carol)
    await alice.data(LEAVE, {"roomId": room["id"]})
    now = (await carol.data(ROOM, {"id": room["id"]}))["room"]
    assert roles(now) == {name_of(bob): "OWNER", name_of(carol): "MEMBER"}


# --- setRole / renameRoom ---------------------------------------------------------------------


async def test_set_role_is_for_the_owner_and_handing_over_owner_makes_them_admin(
    sign_up: SignUp,
) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room = await group(alice, bob, carol)
    room_id = room["id"]
    variables = {"roomId": room_id, "name": name_of(carol), "role": "ADMIN"}
    await alice.data(SET_ROLE, {**variables, "name": name_of(bob)})
    assert code(await bob.error(SET_ROLE, variables)) == "FORBIDDEN"  # ADMIN is not OWNER
    same = (await alice.data(SET_ROLE, {**variables, "name": name_of(bob)}))["setRole"]
    handed = (await alice.data(SET_ROLE, {**variables, "role": "OWNER"}))["setRole"]
    assert roles(handed) == {
        name_of(alice): "ADMIN",
        name_of(bob): "ADMIN",
        name_of(carol): "OWNER",
    }
    # Setting the role a member has changes nothing; handing over appends two entries.
    assert handed["lastSeq"] == same["lastSeq"] + 2
    entries = await log(alice, room_id)
    assert [(e["member"]["name"], e["role"]) for e in entries[-2:]] == [
        (name_of(carol), "OWNER"),
        (name_of(alice), "ADMIN"),
    ]
    assert code(await alice.error(SET_ROLE, {**variables, "name": "no-such-user"})) == "NOT_FOUND"


async def test_rename_is_for_owner_and_admin_and_logged(sign_up: SignUp) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room = await group(alice, bob, carol)
    room_id = room["id"]
    assert code(await bob.error(RENAME, {"roomId": room_id, "name": "new"})) == "FORBIDDEN"
    await alice.data(SET_ROLE, {"roomId": room_id, "name": name_of(bob), "role": "ADMIN"})
    renamed = (await bob.data(RENAME, {"roomId": room_id, "name": "Launch 🚀"}))["renameRoom"]
    assert renamed["name"] == "Launch 🚀"
    entries = await log(carol, room_id)
    assert (entries[-1]["__typename"], entries[-1]["name"]) == ("RoomRenamed", "Launch 🚀")
    again = (await bob.data(RENAME, {"roomId": room_id, "name": "Launch 🚀"}))["renameRoom"]
    assert again["lastSeq"] == renamed["lastSeq"]
    assert code(await bob.error(RENAME, {"roomId": room_id, "name": "x" * 101})) == (
        "BAD_USER_INPUT"
    )


async def test_membership_changes_on_a_direct_room_are_bad_user_input(sign_up: SignUp) -> None:
    alice, bob, carol = await users(sign_up, 3)
    room_id = await open_direct_room(alice, name_of(bob))
    changes: list[tuple[str, dict[str, Any]]] = [
        (ADD, {"roomId": room_id, "names": [name_of(carol)]}),
        (REMOVE, {"roomId": room_id, "name": name_of(bob)}),
        (LEAVE, {"roomId": room_id}),
        (SET_ROLE, {"roomId": room_id, "name": name_of(bob), "role": "ADMIN"}),
        (RENAME, {"roomId": room_id, "name": "ours"}),
    ]
    for document, variables in changes:
        assert code(await alice.error(document, variables)) == "BAD_USER_INPUT", document
    direct = (await alice.data(ROOM, {"id": room_id}))["room"]
    assert direct["kind"] == "DIRECT"
    assert set(roles(direct).values()) == {"MEMBER"}


# --- live: membership cuts subscriptions off; inboxes follow membership -----------------------


async def test_a_removed_member_s_room_subscriptions_end_with_forbidden(
    server: RunningServer, sign_up: SignUp
) -> None:
    alice, bob = await users(sign_up, 2)
    room = await group(alice, bob)
    room_id = room["id"]
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        messages = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
        entries = await socket.subscribe(ROOM_EVENTS, {"roomId": room_id})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 2)
        await send(alice, room_id, "before")
        assert (await messages.data())["messageAdded"]["data"] == "before"
        assert (await entries.data())["roomEvents"]["message"]["data"] == "before"
        await alice.data(REMOVE, {"roomId": room_id, "name": name_of(bob)})
        # roomEvents delivers the MemberLeft, then both streams end with FORBIDDEN.
        left = (await entries.data(timeout=1))["roomEvents"]
        assert (left["__typename"], left["member"]["name"]) == ("MemberLeft", name_of(bob))
        for stream in (messages, entries):
            result = await stream.next(timeout=1)
            assert code(result["errors"][0]) == "FORBIDDEN"
            assert (await stream.next_message(timeout=1))["type"] == "complete"
        await send(alice, room_id, "after")
    # And resubscribing is refused.
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        again = await socket.subscribe(ROOM_EVENTS, {"roomId": room_id})
        result = await again.next()
        assert code(result["errors"][0]) == "FORBIDDEN"


async def test_inbox_events_follows_membership(server: RunningServer, sign_up: SignUp) -> None:
    alice, bob = await users(sign_up, 2)
    room = await group(alice, await sign_up())
    room_id = room["id"]
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        inbox = await socket.subscribe(INBOX_EVENTS)
        await wait_for_subscribers(server, f"user:{bob.user['id']}")  # type: ignore[index]
        await send(alice, room_id, "before bob")  # not bob's yet
        await alice.data(ADD, {"roomId": room_id, "names": [name_of(bob)]})
        await send(alice, room_id, "welcome")
        await alice.data(REMOVE, {"roomId": room_id, "name": name_of(bob)})
        await send(alice, room_id, "after bob")
        # A room of bob's own, to show the stream goes on (and that nothing came in between).
        direct = await open_direct_room(alice, name_of(bob))
        await send(alice, direct, "still here")
        seen = [(await inbox.data())["inboxEvents"] for _ in range(4)]
    assert [(e["__typename"], e["roomId"]) for e in seen] == [
        ("MemberJoined", room_id),
        ("MessagePosted", room_id),
        ("MemberLeft", room_id),
        ("MessagePosted", direct),
    ]
    assert seen[0]["member"]["name"] == name_of(bob)
    assert seen[1]["message"]["data"] == "welcome"
    assert seen[3]["message"]["data"] == "still here"
    assert seen[0]["seq"] == 4  # after the two MemberJoined entries and "before bob"


async def test_an_unknown_name_is_quoted_short_in_the_error(sign_up: SignUp) -> None:
    alice = await sign_up()
    long_name = "z" * 5000
    error = await alice.error(CREATE, {"name": "g", "members": [long_name]})
    assert code(error) == "NOT_FOUND"
    assert len(error["message"]) < 120, error["message"]
