"""One execution per event serves every subscriber that asked for the same thing, and only them."""

from __future__ import annotations

import uuid

from api.chat.constants import room_channel
from schema.fanout import shared_results
from tests.support import (
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    open_direct_room,
    send,
    wait_for_subscribers,
)

PLAIN = "subscription ($roomId: ID!) { messageAdded(roomId: $roomId) { seq data } }"
WITH_SENDER = (
    "subscription ($roomId: ID!) { messageAdded(roomId: $roomId) { seq sender { name } } }"
)
OPTIONAL_SENDER = """
subscription ($roomId: ID!, $withSender: Boolean!, $after: String) {
  messageAdded(roomId: $roomId, after: $after) { seq sender @include(if: $withSender) { name } }
}
"""


async def test_identical_subscriptions_share_one_result_per_event(
    server: RunningServer, make_client
) -> None:
    alice: GraphQLClient = make_client()
    bob: GraphQLClient = make_client()
    await alice.sign_up()
    bob_user = await bob.sign_up()
    room_id = await open_direct_room(alice, bob_user["name"])
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        streams = [await socket.subscribe(PLAIN, {"roomId": room_id}) for _ in range(5)]
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 5)
        hits_before = shared_results.hits
        await send(alice, room_id, "once")
        results = [(await stream.data())["messageAdded"] for stream in streams]
    assert results == [{"seq": 1, "data": "once"}] * 5
    assert shared_results.hits - hits_before == 4


async def test_different_selections_and_variables_each_get_their_own_shape(
    server: RunningServer, make_client
) -> None:
    alice: GraphQLClient = make_client()
    bob: GraphQLClient = make_client()
    alice_user = await alice.sign_up()
    bob_user = await bob.sign_up()
    room_id = await open_direct_room(alice, bob_user["name"])
    first = await send(alice, room_id, "first")
    async with GraphQLWebSocket.connect(server.ws_url, cookie=bob.session_cookie) as socket:
        plain = await socket.subscribe(PLAIN, {"roomId": room_id})
        with_sender = await socket.subscribe(WITH_SENDER, {"roomId": room_id})
        # Same document; a variable inside the selection changes the shape, while `after`,
        # an argument of the root field, does not (it only picks events).
        shown = await socket.subscribe(
            OPTIONAL_SENDER, {"roomId": room_id, "withSender": True, "after": first["cursor"]}
        )
        hidden = await socket.subscribe(OPTIONAL_SENDER, {"roomId": room_id, "withSender": False})
        await wait_for_subscribers(server, room_channel(uuid.UUID(room_id)), 4)
        await send(alice, room_id, "second")
        assert (await plain.data())["messageAdded"] == {"seq": 2, "data": "second"}
        assert (await with_sender.data())["messageAdded"] == {
            "seq": 2,
            "sender": {"name": alice_user["name"]},
        }
        assert (await shown.data())["messageAdded"] == {
            "seq": 2,
            "sender": {"name": alice_user["name"]},
        }
        assert (await hidden.data())["messageAdded"] == {"seq": 2}
