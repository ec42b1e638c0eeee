"""Rooms: the stable direct room of two users, one room by id, and the list of active rooms."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest

from tests.chat.conftest import Pair, SignUp, id_of, name_of, post_raw
from tests.support import GraphQLClient

DIRECT_ROOM = """
query DirectRoom($with: String!) {
  directRoom(with: $with) { id name members { id name } lastMessage { id seq } }
}
"""
ROOM = """
query Room($id: ID!) {
  room(id: $id) { id name members { id name } lastMessage { id seq data sender { id } } }
}
"""
ROOMS = """
query Rooms($first: Int, $after: String) {
  rooms(first: $first, after: $after) {
    edges {
      cursor
      node { id name members { id name } lastMessage { id seq data sender { name } } }
    }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
SEND_MESSAGE = """
mutation Send($roomId: ID!, $data: String!) {
  sendMessage(roomId: $roomId, data: $data) { id roomId seq }
}
"""
SEND_DIRECT_MESSAGE = """
mutation SendDirect($to: String!, $data: String!) {
  sendDirectMessage(to: $to, data: $data) { id roomId seq }
}
"""
MESSAGES = """
query Messages($roomId: ID!) { messages(roomId: $roomId) { edges { node { seq } } } }
"""


async def _direct_room(client: GraphQLClient, other: str) -> dict[str, Any]:
    room: dict[str, Any] = (await client.data(DIRECT_ROOM, {"with": other}))["directRoom"]
    return room


async def _room_ids(client: GraphQLClient) -> list[str]:
    data = await client.data(ROOMS, {"first": 100})
    return [edge["node"]["id"] for edge in data["rooms"]["edges"]]


# --- directRoom -------------------------------------------------------------------------------


async def test_direct_room_has_the_same_stable_id_for_both_users_before_any_message(
    pair: Pair,
) -> None:
    asked_by_alice = await _direct_room(pair.alice, name_of(pair.bob))
    asked_again_by_alice = await _direct_room(pair.alice, name_of(pair.bob))
    asked_by_bob = await _direct_room(pair.bob, name_of(pair.alice))

    assert asked_by_alice["id"] == pair.room_id
    assert asked_again_by_alice["id"] == pair.room_id
    assert asked_by_bob["id"] == pair.room_id
    assert asked_by_alice["lastMessage"] is None
    assert asked_by_bob["lastMessage"] is None


async def test_direct_room_id_is_the_room_its_messages_land_in(pair: Pair) -> None:
    data = await pair.bob.data(SEND_DIRECT_MESSAGE, {"to": name_of(pair.alice), "data": "hi"})

    assert data["sendDirectMessage"]["roomId"] == pair.room_id


async def test_direct_room_is_named_after_both_members_sorted_and_lists_them(
    sign_up: SignUp,
) -> None:
    token = uuid.uuid4().hex[:8]
    # Created in reverse alphabetical order, so sorting is observable.
    zed = await sign_up(f"zed_{token}")
    amy = await sign_up(f"amy_{token}")

    room = await _direct_room(zed, name_of(amy))

    assert room["name"] == f"amy_{token}, zed_{token}"
    assert {member["id"] for member in room["members"]} == {id_of(zed), id_of(amy)}
    assert {member["name"] for member in room["members"]} == {name_of(zed), name_of(amy)}


async def test_direct_room_ids_come_from_user_ids_not_from_joined_names(sign_up: SignUp) -> None:
    token = uuid.uuid4().hex[:8]
    # Joined with "_", both pairs read "<t>_<t>_dd<t>": an id made of joined names would collide.
    first_pair = (await sign_up(f"{token}_{token}"), await sign_up("dd" + token))
    second_pair = (await sign_up(token), await sign_up(f"{token}_dd{token}"))

    first_room = await _direct_room(first_pair[0], name_of(first_pair[1]))
    second_room = await _direct_room(second_pair[0], name_of(second_pair[1]))

    assert first_room["id"] != second_room["id"]
    assert first_room["name"] != second_room["name"]
    assert {m["id"] for m in first_room["members"]} == {id_of(c) for c in first_pair}
    assert {m["id"] for m in second_room["members"]} == {id_of(c) for c in second_pair}


async def test_direct_room_with_oneself_is_bad_user_input(sign_up: SignUp) -> None:
    me = await sign_up()

    error = await me.error(DIRECT_ROOM, {"with": name_of(me)})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_direct_room_with_an_unknown_user_is_not_found(sign_up: SignUp) -> None:
    me = await sign_up()

    error = await me.error(DIRECT_ROOM, {"with": f"nobody_{uuid.uuid4().hex[:8]}"})

    assert error["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "escaped_name",
    [
        pytest.param(
            "ab\\u0000cd",
            id="nul",
        ),
        pytest.param(
            "ab\\ud800cd",
            id="lone-surrogate",
        ),
    ],
)
async def test_direct_room_with_a_name_no_user_can_have_is_a_client_error(
    sign_up: SignUp, escaped_name: str
) -> None:
    me = await sign_up()
    body = (
        '{"query": "query($w: String!) { directRoom(with: $w) { id } }",'
        f' "variables": {{"w": "{escaped_name}"}}}}'
    )

    result = await post_raw(me, body)

    assert result["errors"][0]["extensions"]["code"] in ("NOT_FOUND", "BAD_USER_INPUT"), result


# --- room(id) ---------------------------------------------------------------------------------


async def test_room_by_id_returns_the_room_with_its_last_message_to_a_member(pair: Pair) -> None:
    await pair.alice.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": "first"})
    await pair.bob.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": "second"})

    room = (await pair.alice.data(ROOM, {"id": pair.room_id}))["room"]

    assert room["id"] == pair.room_id
    assert room["name"] == ", ".join(sorted([name_of(pair.alice), name_of(pair.bob)]))
    assert {member["id"] for member in room["members"]} == {id_of(pair.alice), id_of(pair.bob)}
    assert room["lastMessage"]["seq"] == 2
    assert room["lastMessage"]["data"] == "second"
    assert room["lastMessage"]["sender"]["id"] == id_of(pair.bob)


async def test_room_by_id_before_any_message_has_no_last_message(pair: Pair) -> None:
    room = (await pair.bob.data(ROOM, {"id": pair.room_id}))["room"]

    assert room["id"] == pair.room_id
    assert room["lastMessage"] is None


async def test_room_by_an_unknown_id_is_null(sign_up: SignUp) -> None:
    me = await sign_up()

    data = await me.data(ROOM, {"id": str(uuid.uuid4())})

    assert data["room"] is None


@pytest.mark.parametrize("room_id", ["not-a-room", "", "1234", "x" * 500])
async def test_room_by_a_malformed_id_is_bad_user_input(sign_up: SignUp, room_id: str) -> None:
    me = await sign_up()

    error = await me.error(ROOM, {"id": room_id})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


# --- rooms ------------------------------------------------------------------------------------


async def test_rooms_lists_only_rooms_with_messages_with_members_and_last_message(
    sign_up: SignUp,
) -> None:
    me = await sign_up()
    talked_to = await sign_up()
    silent = await sign_up()
    await _direct_room(me, name_of(silent))
    sent = await me.data(SEND_DIRECT_MESSAGE, {"to": name_of(talked_to), "data": "hello"})

    connection = (await me.data(ROOMS))["rooms"]

    assert [edge["node"]["id"] for edge in connection["edges"]] == [
        sent["sendDirectMessage"]["roomId"]
    ]
    node = connection["edges"][0]["node"]
    assert {member["id"] for member in node["members"]} == {id_of(me), id_of(talked_to)}
    assert node["lastMessage"]["id"] == sent["sendDirectMessage"]["id"]
    assert node["lastMessage"]["data"] == "hello"
    assert node["lastMessage"]["sender"]["name"] == name_of(me)
    assert connection["pageInfo"]["hasNextPage"] is False


async def test_rooms_of_a_user_without_messages_is_empty(sign_up: SignUp) -> None:
    me = await sign_up()
    other = await sign_up()
    await _direct_room(me, name_of(other))

    connection = (await me.data(ROOMS))["rooms"]

    assert connection["edges"] == []
    assert connection["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": False,
        "startCursor": None,
        "endCursor": None,
    }


async def _five_rooms_oldest_activity_first(
    sign_up: SignUp,
) -> tuple[GraphQLClient, list[GraphQLClient], list[str]]:
    me = await sign_up()
    peers = [await sign_up() for _ in range(5)]
    room_ids = []
    for peer in peers:
        sent = await me.data(SEND_DIRECT_MESSAGE, {"to": name_of(peer), "data": "hi"})
        room_ids.append(sent["sendDirectMessage"]["roomId"])
    return me, peers, room_ids


async def test_rooms_are_listed_most_recent_activity_first(sign_up: SignUp) -> None:
    me, _, room_ids = await _five_rooms_oldest_activity_first(sign_up)

    assert await _room_ids(me) == list(reversed(room_ids))


async def test_rooms_paged_by_two_visit_every_room_once_in_activity_order(
    sign_up: SignUp,
) -> None:
    me, _, room_ids = await _five_rooms_oldest_activity_first(sign_up)

    seen: list[str] = []
    pages = []
    after = None
    while True:
        connection = (await me.data(ROOMS, {"first": 2, "after": after}))["rooms"]
        edges = connection["edges"]
        page_info = connection["pageInfo"]
        pages.append(len(edges))
        seen.extend(edge["node"]["id"] for edge in edges)
        assert page_info["startCursor"] == edges[0]["cursor"]
        assert page_info["endCursor"] == edges[-1]["cursor"]
        if after is None:
            assert page_info["hasPreviousPage"] is False
        if not page_info["hasNextPage"]:
            break
        after = page_info["endCursor"]
        assert len(pages) < 5, "pagination does not end"

    assert pages == [2, 2, 1]
    assert seen == list(reversed(room_ids))


async def test_sending_into_an_older_room_moves_it_to_the_top(sign_up: SignUp) -> None:
    me, peers, room_ids = await _five_rooms_oldest_activity_first(sign_up)

    # The peer answers in the second-oldest room: activity by anyone counts.
    await peers[1].data(SEND_MESSAGE, {"roomId": room_ids[1], "data": "back again"})

    ordered = await _room_ids(me)
    assert ordered == [room_ids[1], room_ids[4], room_ids[3], room_ids[2], room_ids[0]]
    top = (await me.data(ROOMS, {"first": 1}))["rooms"]["edges"][0]["node"]
    assert top["lastMessage"]["data"] == "back again"
    assert top["lastMessage"]["seq"] == 2


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!!",
        base64.urlsafe_b64encode(b"not a room cursor").decode(),
        base64.urlsafe_b64encode(b"r:yesterday|not-a-uuid").decode(),
        "A" * 300,
    ],
    ids=["garbage", "base64-junk", "base64-bad-fields", "too-long"],
)
async def test_rooms_with_a_malformed_cursor_is_bad_user_input(
    sign_up: SignUp, cursor: str
) -> None:
    me = await sign_up()

    error = await me.error(ROOMS, {"first": 2, "after": cursor})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_rooms_with_a_cursor_timestamp_without_offset_is_bad_user_input(
    sign_up: SignUp,
) -> None:
    me = await sign_up()
    cursor = base64.urlsafe_b64encode(f"r:2024-01-01T00:00:00|{uuid.uuid4()}".encode()).decode()

    error = await me.error(ROOMS, {"first": 2, "after": cursor})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("first", [-1, 101])
async def test_rooms_with_a_page_size_out_of_range_is_bad_user_input(
    sign_up: SignUp, first: int
) -> None:
    me = await sign_up()

    error = await me.error(ROOMS, {"first": first})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


# --- membership and authentication --------------------------------------------------------------

RANDOM_ROOM = str(uuid.uuid4())
CHAT_FIELDS = {
    "directRoom": (DIRECT_ROOM, {"with": "somebody"}),
    "room": (ROOM, {"id": RANDOM_ROOM}),
    "rooms": (ROOMS, {}),
    "messages": (MESSAGES, {"roomId": RANDOM_ROOM}),
    "sendMessage": (SEND_MESSAGE, {"roomId": RANDOM_ROOM, "data": "hi"}),
    "sendDirectMessage": (SEND_DIRECT_MESSAGE, {"to": "somebody", "data": "hi"}),
}


@pytest.mark.parametrize("field", list(CHAT_FIELDS))
async def test_every_chat_field_is_unauthenticated_without_a_session(
    client: GraphQLClient, field: str
) -> None:
    document, variables = CHAT_FIELDS[field]

    error = await client.error(document, variables)

    assert error["path"] == [field]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"


# Each field that takes a room, with the name of its room argument.
ROOM_FIELDS = {
    "room": (ROOM, "id"),
    "messages": (MESSAGES, "roomId"),
    "sendMessage": (SEND_MESSAGE, "roomId"),
}


@pytest.mark.parametrize("field", list(ROOM_FIELDS))
async def test_chat_fields_of_a_real_room_are_unauthenticated_without_a_session(
    pair: Pair, client: GraphQLClient, field: str
) -> None:
    await pair.alice.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": "secret"})
    document, room_argument = ROOM_FIELDS[field]
    variables = {**CHAT_FIELDS[field][1], room_argument: pair.room_id}

    result = await client.post(document, variables)

    assert result["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert "secret" not in json.dumps(result)
    history = (await pair.alice.data(MESSAGES, {"roomId": pair.room_id}))["messages"]["edges"]
    assert [edge["node"]["seq"] for edge in history] == [1]


@pytest.mark.parametrize("field", list(ROOM_FIELDS))
async def test_chat_fields_of_a_room_are_forbidden_to_an_outsider(
    pair: Pair, sign_up: SignUp, field: str
) -> None:
    await pair.alice.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": "secret"})
    outsider = await sign_up()
    document, room_argument = ROOM_FIELDS[field]
    variables = {**CHAT_FIELDS[field][1], room_argument: pair.room_id}

    result = await outsider.post(document, variables)

    assert result["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "secret" not in json.dumps(result)
    history = (await pair.bob.data(MESSAGES, {"roomId": pair.room_id}))["messages"]["edges"]
    assert [edge["node"]["seq"] for edge in history] == [1]


# --- direct room ids are not computable -------------------------------------------------------

# The namespace the old, computable ids came from: uuid5(namespace, "<low id>:<high id>").
OLD_DIRECT_ROOM_NAMESPACE = uuid.UUID("6f1c2a3e-9d7b-5c4e-8a21-3b0f5e7d9c11")
ROOM_BY_ID = "query Room($id: ID!) { room(id: $id) { id } }"


def computed_room_id(a: str, b: str) -> str:
    low, high = sorted((uuid.UUID(a), uuid.UUID(b)))
    return str(uuid.uuid5(OLD_DIRECT_ROOM_NAMESPACE, f"{low}:{high}"))


async def test_a_direct_rooms_id_is_random_not_computed_from_its_members(pair: Pair) -> None:
    room_id = uuid.UUID(pair.room_id)
    assert room_id.version == 4
    assert str(room_id) != computed_room_id(id_of(pair.alice), id_of(pair.bob))


async def test_an_outsider_cannot_tell_which_pairs_have_a_direct_room(
    pair: Pair, sign_up: SignUp
) -> None:
    await pair.alice.data(SEND_DIRECT_MESSAGE, {"to": name_of(pair.bob), "data": "secret"})
    carol = await sign_up()
    dave = await sign_up()
    talking = computed_room_id(id_of(pair.alice), id_of(pair.bob))
    silent = computed_room_id(id_of(carol), id_of(dave))
    # The same answer whether the pair talks or not: no such room (not FORBIDDEN).
    assert await carol.data(ROOM_BY_ID, {"id": talking}) == {"room": None}
    assert await carol.data(ROOM_BY_ID, {"id": silent}) == {"room": None}


async def test_concurrent_first_contacts_create_one_direct_room(sign_up: SignUp) -> None:
    alice, bob = await sign_up(), await sign_up()
    rooms = await asyncio.gather(
        *(_direct_room(alice, name_of(bob)) for _ in range(5)),
        *(_direct_room(bob, name_of(alice)) for _ in range(5)),
    )
    sent = await asyncio.gather(
        *(
            sender.data(SEND_DIRECT_MESSAGE, {"to": name_of(to), "data": f"m{n}"})
            for n, (sender, to) in enumerate([(alice, bob), (bob, alice)] * 5)
        )
    )
    room_ids = {room["id"] for room in rooms} | {m["sendDirectMessage"]["roomId"] for m in sent}
    assert len(room_ids) == 1
    assert sorted(m["sendDirectMessage"]["seq"] for m in sent) == list(range(1, 11))
