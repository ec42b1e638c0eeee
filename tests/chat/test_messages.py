"""Sending: gap-free seq per room, validation, idempotent retries, concurrency, several devices."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.chat.conftest import Pair, SignUp, id_of, name_of, post_raw
from tests.support import GraphQLClient

MESSAGE_FIELDS = "id roomId seq type data clientMessageId createdAt cursor sender { id name }"
SEND_MESSAGE = f"""
mutation Send($roomId: ID!, $data: String!, $clientMessageId: String) {{
  sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) {{
    {MESSAGE_FIELDS}
  }}
}}
"""
SEND_TYPED_MESSAGE = f"""
mutation SendTyped($roomId: ID!, $data: String!, $type: String!) {{
  sendMessage(roomId: $roomId, data: $data, type: $type) {{ {MESSAGE_FIELDS} }}
}}
"""
SEND_DIRECT_MESSAGE = f"""
mutation SendDirect($to: String!, $data: String!, $type: String! = "text",
                    $clientMessageId: String) {{
  sendDirectMessage(to: $to, data: $data, type: $type, clientMessageId: $clientMessageId) {{
    {MESSAGE_FIELDS}
  }}
}}
"""
HISTORY = f"""
query History($roomId: ID!) {{
  messages(roomId: $roomId, first: 100) {{ edges {{ node {{ {MESSAGE_FIELDS} }} }} }}
}}
"""
FULL_HISTORY = """
query FullHistory($roomId: ID!, $after: String) {
  messages(roomId: $roomId, first: 100, after: $after) {
    edges { node { seq data clientMessageId sender { id } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
ROOMS = """
query Rooms { rooms { edges { node { id members { name } lastMessage { id data } } } } }
"""

MAX_DATA_LENGTH = 4000


async def _send(
    client: GraphQLClient, room_id: str, data: str, client_message_id: str | None = None
) -> dict[str, Any]:
    variables = {"roomId": room_id, "data": data, "clientMessageId": client_message_id}
    message: dict[str, Any] = (await client.data(SEND_MESSAGE, variables))["sendMessage"]
    return message


async def _history(client: GraphQLClient, room_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after = None
    while True:
        data = await client.data(FULL_HISTORY, {"roomId": room_id, "after": after})
        connection = data["messages"]
        messages.extend(edge["node"] for edge in connection["edges"])
        if not connection["pageInfo"]["hasNextPage"]:
            return messages
        after = connection["pageInfo"]["endCursor"]


async def _seqs(client: GraphQLClient, room_id: str) -> list[int]:
    return [message["seq"] for message in await _history(client, room_id)]


def _raw_send(room_id: str, escaped_data: str) -> str:
    """A sendMessage request whose data is written with JSON escapes, not re-encoded."""
    return (
        '{"query": "mutation($r: ID!, $d: String!) { sendMessage(roomId: $r, data: $d) '
        '{ seq data } }", "variables": {"r": "' + room_id + '", "d": "' + escaped_data + '"}}'
    )


# --- seq and content ----------------------------------------------------------------------------


async def test_messages_of_a_room_are_numbered_1_2_3_in_send_order(pair: Pair) -> None:
    sent = [
        await _send(pair.alice, pair.room_id, "one"),
        await _send(pair.bob, pair.room_id, "two"),
        await _send(pair.alice, pair.room_id, "three"),
    ]

    assert [message["seq"] for message in sent] == [1, 2, 3]
    assert [(m["seq"], m["data"]) for m in await _history(pair.alice, pair.room_id)] == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
    ]


async def test_each_room_numbers_its_messages_from_1(pair: Pair, sign_up: SignUp) -> None:
    await _send(pair.alice, pair.room_id, "in the first room")
    await _send(pair.alice, pair.room_id, "again")
    carol = await sign_up()

    other = await pair.alice.data(SEND_DIRECT_MESSAGE, {"to": name_of(carol), "data": "hi"})

    assert other["sendDirectMessage"]["roomId"] != pair.room_id
    assert other["sendDirectMessage"]["seq"] == 1


async def test_a_sent_message_carries_everything_the_contract_promises(pair: Pair) -> None:
    message = await _send(pair.alice, pair.room_id, "hello", client_message_id="c-1")

    assert message["roomId"] == pair.room_id
    assert message["data"] == "hello"
    assert message["clientMessageId"] == "c-1"
    assert message["createdAt"]
    assert message["cursor"]
    assert message["sender"] == {"id": id_of(pair.alice), "name": name_of(pair.alice)}
    [stored] = (await pair.bob.data(HISTORY, {"roomId": pair.room_id}))["messages"]["edges"]
    assert stored["node"] == message


async def test_type_defaults_to_text(pair: Pair) -> None:
    message = await _send(pair.alice, pair.room_id, "plain")

    assert message["type"] == "text"


@pytest.mark.parametrize("message_type", ["image", "app.poll/v2+json", "x", "a" * 32])
async def test_a_custom_short_type_identifier_is_accepted_and_kept(
    pair: Pair, message_type: str
) -> None:
    variables = {"roomId": pair.room_id, "data": "payload", "type": message_type}

    message = (await pair.alice.data(SEND_TYPED_MESSAGE, variables))["sendMessage"]

    assert message["type"] == message_type
    [stored] = (await pair.bob.data(HISTORY, {"roomId": pair.room_id}))["messages"]["edges"]
    assert stored["node"]["type"] == message_type


@pytest.mark.parametrize(
    "message_type",
    ["", "1text", "has space", "a" * 33, "tëxt", "text;drop", "-text"],
    ids=["empty", "digit-first", "space", "too-long", "non-ascii", "semicolon", "dash-first"],
)
async def test_an_invalid_type_is_bad_user_input_and_stores_nothing(
    pair: Pair, message_type: str
) -> None:
    variables = {"roomId": pair.room_id, "data": "payload", "type": message_type}

    error = await pair.alice.error(SEND_TYPED_MESSAGE, variables)

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert await _seqs(pair.alice, pair.room_id) == []


@pytest.mark.parametrize("message_type", ["text\n", "a" * 32 + "\n"], ids=["text", "max-length"])
async def test_a_type_with_a_trailing_newline_is_bad_user_input(
    pair: Pair, message_type: str
) -> None:
    variables = {"roomId": pair.room_id, "data": "payload", "type": message_type}

    result = await pair.alice.post(SEND_TYPED_MESSAGE, variables)

    assert result.get("errors"), result
    assert result["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_data_of_exactly_the_maximum_length_is_accepted(pair: Pair) -> None:
    data = "é" * MAX_DATA_LENGTH

    message = await _send(pair.alice, pair.room_id, data)

    assert message["data"] == data
    [stored] = (await pair.bob.data(HISTORY, {"roomId": pair.room_id}))["messages"]["edges"]
    assert stored["node"]["data"] == data


@pytest.mark.parametrize(
    "data",
    ["", "x" * (MAX_DATA_LENGTH + 1), "before\u0000after", "\u0000"],
    ids=["empty", "one-too-long", "nul-inside", "only-nul"],
)
async def test_invalid_data_is_bad_user_input_and_stores_nothing(pair: Pair, data: str) -> None:
    error = await pair.alice.error(SEND_MESSAGE, {"roomId": pair.room_id, "data": data})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert await _seqs(pair.alice, pair.room_id) == []
    # No seq was used up by the refused message.
    assert (await _send(pair.alice, pair.room_id, "valid"))["seq"] == 1


@pytest.mark.parametrize(
    "escaped_data", ["\\ud800", "abc\\udfffdef", "\\ude00\\ud83d"], ids=["high", "low", "swapped"]
)
async def test_a_lone_surrogate_in_data_is_bad_user_input_and_stores_nothing(
    pair: Pair, escaped_data: str
) -> None:
    result = await post_raw(pair.alice, _raw_send(pair.room_id, escaped_data))

    assert result["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", result
    assert await _seqs(pair.alice, pair.room_id) == []


async def test_an_escaped_surrogate_pair_in_data_is_one_valid_character(pair: Pair) -> None:
    result = await post_raw(pair.alice, _raw_send(pair.room_id, "smile \\ud83d\\ude00"))

    assert "errors" not in result, result
    assert result["data"]["sendMessage"] == {"seq": 1, "data": "smile \U0001f600"}


async def test_the_sender_is_always_the_signed_in_user(pair: Pair) -> None:
    from_alice = await _send(pair.alice, pair.room_id, "from alice")
    from_bob = await _send(pair.bob, pair.room_id, "from bob")

    assert from_alice["sender"]["id"] == id_of(pair.alice)
    assert from_bob["sender"]["id"] == id_of(pair.bob)
    history = await _history(pair.bob, pair.room_id)
    assert [m["sender"]["id"] for m in history] == [id_of(pair.alice), id_of(pair.bob)]


# --- sendDirectMessage ------------------------------------------------------------------------


async def test_a_direct_message_to_a_new_user_creates_the_room_the_recipient_sees(
    sign_up: SignUp,
) -> None:
    sender = await sign_up()
    recipient = await sign_up()
    assert (await recipient.data(ROOMS))["rooms"]["edges"] == []

    sent = await sender.data(SEND_DIRECT_MESSAGE, {"to": name_of(recipient), "data": "hello"})

    message = sent["sendDirectMessage"]
    assert message["seq"] == 1
    assert message["sender"]["id"] == id_of(sender)
    [edge] = (await recipient.data(ROOMS))["rooms"]["edges"]
    assert edge["node"]["id"] == message["roomId"]
    assert {m["name"] for m in edge["node"]["members"]} == {name_of(sender), name_of(recipient)}
    assert edge["node"]["lastMessage"] == {"id": message["id"], "data": "hello"}
    assert [m["data"] for m in await _history(recipient, message["roomId"])] == ["hello"]


async def test_direct_messages_both_ways_share_one_room(pair: Pair) -> None:
    to_bob = await pair.alice.data(SEND_DIRECT_MESSAGE, {"to": name_of(pair.bob), "data": "a"})
    to_alice = await pair.bob.data(SEND_DIRECT_MESSAGE, {"to": name_of(pair.alice), "data": "b"})

    assert to_bob["sendDirectMessage"]["roomId"] == pair.room_id
    assert to_alice["sendDirectMessage"]["roomId"] == pair.room_id
    assert to_alice["sendDirectMessage"]["seq"] == 2


async def test_a_direct_message_to_oneself_is_bad_user_input(sign_up: SignUp) -> None:
    me = await sign_up()

    error = await me.error(SEND_DIRECT_MESSAGE, {"to": name_of(me), "data": "note to self"})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await me.data(ROOMS))["rooms"]["edges"] == []


async def test_a_direct_message_to_an_unknown_user_is_not_found(sign_up: SignUp) -> None:
    me = await sign_up()
    nobody = f"nobody_{uuid.uuid4().hex[:8]}"

    error = await me.error(SEND_DIRECT_MESSAGE, {"to": nobody, "data": "hello?"})

    assert error["extensions"]["code"] == "NOT_FOUND"
    assert (await me.data(ROOMS))["rooms"]["edges"] == []


async def test_an_invalid_direct_message_creates_no_room(sign_up: SignUp) -> None:
    sender = await sign_up()
    recipient = await sign_up()

    error = await sender.error(SEND_DIRECT_MESSAGE, {"to": name_of(recipient), "data": ""})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await recipient.data(ROOMS))["rooms"]["edges"] == []


# --- sendMessage: which room ----------------------------------------------------------------------


@pytest.mark.parametrize("room_id", ["not-a-room", "", "42"])
async def test_sending_to_a_malformed_room_id_is_bad_user_input(
    sign_up: SignUp, room_id: str
) -> None:
    me = await sign_up()

    error = await me.error(SEND_MESSAGE, {"roomId": room_id, "data": "hi"})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_sending_to_an_unknown_room_is_not_found(sign_up: SignUp) -> None:
    me = await sign_up()

    error = await me.error(SEND_MESSAGE, {"roomId": str(uuid.uuid4()), "data": "hi"})

    assert error["extensions"]["code"] == "NOT_FOUND"


async def test_an_outsider_cannot_send_into_a_room_and_nothing_is_stored(
    pair: Pair, sign_up: SignUp
) -> None:
    await _send(pair.alice, pair.room_id, "members only")
    outsider = await sign_up()

    error = await outsider.error(SEND_MESSAGE, {"roomId": pair.room_id, "data": "let me in"})

    assert error["extensions"]["code"] == "FORBIDDEN"
    assert [m["data"] for m in await _history(pair.bob, pair.room_id)] == ["members only"]
    assert (await _send(pair.bob, pair.room_id, "next"))["seq"] == 2


# --- clientMessageId ----------------------------------------------------------------------------


async def test_a_retried_client_message_id_returns_the_original_and_stores_nothing(
    pair: Pair,
) -> None:
    original = await _send(pair.alice, pair.room_id, "once", client_message_id="retry-1")

    retried = await _send(pair.alice, pair.room_id, "once, again", client_message_id="retry-1")

    assert retried == original
    history = await _history(pair.alice, pair.room_id)
    assert [(m["seq"], m["data"]) for m in history] == [(1, "once")]
    assert (await _send(pair.alice, pair.room_id, "later"))["seq"] == 2


async def test_a_retried_direct_message_returns_the_original(pair: Pair) -> None:
    variables = {"to": name_of(pair.bob), "data": "dm", "clientMessageId": "dm-1"}
    original = (await pair.alice.data(SEND_DIRECT_MESSAGE, variables))["sendDirectMessage"]

    retried = (await pair.alice.data(SEND_DIRECT_MESSAGE, variables))["sendDirectMessage"]
    by_room = await _send(pair.alice, pair.room_id, "dm", client_message_id="dm-1")

    assert retried == original
    assert by_room == original
    assert await _seqs(pair.bob, pair.room_id) == [1]


async def test_another_sender_may_reuse_a_client_message_id_in_the_same_room(pair: Pair) -> None:
    from_alice = await _send(pair.alice, pair.room_id, "alice", client_message_id="shared")

    from_bob = await _send(pair.bob, pair.room_id, "bob", client_message_id="shared")

    assert from_bob["id"] != from_alice["id"]
    assert (from_alice["seq"], from_bob["seq"]) == (1, 2)
    assert from_bob["sender"]["id"] == id_of(pair.bob)
    assert [m["data"] for m in await _history(pair.alice, pair.room_id)] == ["alice", "bob"]


async def test_the_same_client_message_id_in_another_room_is_a_new_message(
    pair: Pair, sign_up: SignUp
) -> None:
    carol = await sign_up()
    in_first = await _send(pair.alice, pair.room_id, "first room", client_message_id="same")

    variables = {"to": name_of(carol), "data": "second room", "clientMessageId": "same"}
    in_second = (await pair.alice.data(SEND_DIRECT_MESSAGE, variables))["sendDirectMessage"]

    assert in_second["id"] != in_first["id"]
    assert in_second["roomId"] != pair.room_id
    assert in_second["data"] == "second room"


@pytest.mark.parametrize("client_message_id", ["", "x" * 65, "tab\there", "nul\u0000"])
async def test_an_invalid_client_message_id_is_bad_user_input(
    pair: Pair, client_message_id: str
) -> None:
    variables = {"roomId": pair.room_id, "data": "hi", "clientMessageId": client_message_id}

    error = await pair.alice.error(SEND_MESSAGE, variables)

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert await _seqs(pair.alice, pair.room_id) == []


async def test_racing_retries_from_two_devices_store_exactly_one_message(
    pair: Pair, sign_in: Callable[[str], Awaitable[GraphQLClient]]
) -> None:
    phone = pair.alice
    laptop = await sign_in(name_of(pair.alice))
    await _send(pair.bob, pair.room_id, "before")

    results = await asyncio.gather(
        *(
            _send(device, pair.room_id, f"attempt {n}", client_message_id="race-1")
            for n in range(5)
            for device in (phone, laptop)
        )
    )
    after = await _send(pair.bob, pair.room_id, "after")

    assert len({(message["id"], message["seq"]) for message in results}) == 1
    assert {message["data"] for message in results} == {results[0]["data"]}
    assert results[0]["seq"] == 2
    history = await _history(pair.bob, pair.room_id)
    assert [m["seq"] for m in history] == [1, 2, 3]
    assert [m["clientMessageId"] for m in history].count("race-1") == 1
    assert after["seq"] == 3


# --- concurrency and devices ------------------------------------------------------------------


async def test_concurrent_senders_get_gap_free_seqs_and_keep_their_own_order(
    pair: Pair, sign_in: Callable[[str], Awaitable[GraphQLClient]]
) -> None:
    senders = [
        pair.alice,
        pair.bob,
        await sign_in(name_of(pair.alice)),
        await sign_in(name_of(pair.bob)),
    ]
    per_sender = 50

    async def send_all(index: int, sender: GraphQLClient) -> list[int]:
        # Each sender sends sequentially; the four run concurrently.
        return [
            (await _send(sender, pair.room_id, f"{index}:{n}"))["seq"] for n in range(per_sender)
        ]

    returned = await asyncio.gather(*(send_all(i, s) for i, s in enumerate(senders)))

    history = await _history(pair.alice, pair.room_id)
    total = per_sender * len(senders)
    assert [m["seq"] for m in history] == list(range(1, total + 1))
    assert sorted(seq for seqs in returned for seq in seqs) == list(range(1, total + 1))
    for index, seqs in enumerate(returned):
        own = [m for m in history if m["data"].startswith(f"{index}:")]
        assert [m["data"] for m in own] == [f"{index}:{n}" for n in range(per_sender)]
        assert [m["seq"] for m in own] == seqs
        assert seqs == sorted(seqs)


async def test_two_devices_of_one_user_see_the_same_history_and_can_both_send(
    pair: Pair, sign_in: Callable[[str], Awaitable[GraphQLClient]]
) -> None:
    phone = pair.alice
    laptop = await sign_in(name_of(pair.alice))

    from_phone = await _send(phone, pair.room_id, "from phone")
    from_laptop = await _send(laptop, pair.room_id, "from laptop")
    await _send(pair.bob, pair.room_id, "reply")

    assert from_phone["sender"]["id"] == from_laptop["sender"]["id"] == id_of(pair.alice)
    seen_by_phone = await phone.data(HISTORY, {"roomId": pair.room_id})
    seen_by_laptop = await laptop.data(HISTORY, {"roomId": pair.room_id})
    assert seen_by_phone == seen_by_laptop
    edges = seen_by_phone["messages"]["edges"]
    assert [edge["node"]["data"] for edge in edges] == ["from phone", "from laptop", "reply"]
    assert json.dumps(edges[1]["node"], sort_keys=True) == json.dumps(from_laptop, sort_keys=True)


async def test_a_send_cut_off_after_commit_is_still_published(server, make_client) -> None:
    """A client that goes away mid-send must not leave a stored message no subscriber hears of."""
    import asyncio
    import uuid as uuid_module

    from api.chat import service as chat_service
    from api.chat.constants import room_channel
    from api.users.service import authenticate

    state = server.app.state.chat
    alice, bob = make_client(), make_client()
    await alice.sign_up()
    bob_user = await bob.sign_up()
    room = await alice.data(
        "query($w: String!) { directRoom(with: $w) { id } }", {"w": bob_user["name"]}
    )
    room_id = uuid_module.UUID(room["directRoom"]["id"])
    auth = await authenticate(db=state.db, keys=state.keys, cookie_value=alice.session_cookie)
    async with state.pubsub.subscribe(room_channel(room_id)) as subscription:
        published = asyncio.ensure_future(anext(aiter(subscription)))
        send = asyncio.ensure_future(
            chat_service.send_message(
                db=state.db,
                pubsub=state.pubsub,
                unfinished=state.unfinished,
                sender=auth.user,
                room_id=room_id,
                data="cut",
            )
        )
        await asyncio.sleep(0)  # the send starts, then its caller is cancelled
        send.cancel()
        payload = await asyncio.wait_for(published, 5)
    assert '"data":"cut"' in str(payload)
    history = await alice.data(
        "query($r: ID!) { messages(roomId: $r) { edges { node { data } } } }", {"r": str(room_id)}
    )
    assert [edge["node"]["data"] for edge in history["messages"]["edges"]] == ["cut"]
