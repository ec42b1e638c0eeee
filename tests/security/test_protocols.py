"""Both WebSocket protocols, driven by a careless or hostile client over a raw socket:
malformed frames close with 4400 and a reason, `connection_init` has a deadline and happens
once per socket, on graphql-transport-ws and on the legacy graphql-ws alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from websockets.typing import Subprotocol

from tests.security.conftest import assert_still_serving, policy_server
from tests.support import (
    INBOX,
    GraphQLClient,
    GraphQLWebSocket,
    RunningServer,
    subscription_total,
    wait_for_subscriber_total,
)

PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
INIT = json.dumps({"type": "connection_init", "payload": {}})
SUBSCRIBE = {"graphql-transport-ws": "subscribe", "graphql-ws": "start"}

# Frames a client may send by mistake or on purpose; none is a protocol message.
MALFORMED = {
    "number": "1",
    "string": '"x"',
    "list": "[]",
    "null": "null",
    "no type": '{"payload": {}}',
    "type not a string": '{"type": 7}',
    "payload not an object": '{"type": "connection_init", "payload": "x"}',
    "deeply nested": "[" * 5000 + "]" * 5000,
}
MALFORMED_OPERATIONS = {
    "id not a string": {"id": 1, "payload": {"query": "{ me { id } }"}},
    "no id": {"payload": {"query": "{ me { id } }"}},
    "payload a string": {"id": "1", "payload": "{ me { id } }"},
    "payload a list": {"id": "1", "payload": []},
    "no query": {"id": "1", "payload": {}},
    "variables a list": {"id": "1", "payload": {"query": "{ me { id } }", "variables": []}},
}


@pytest.fixture(scope="module")
async def quick_init_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """A 0.5 s connection_init deadline."""
    async with policy_server(
        database_url, broadcast_url, data_dir, connection_init_timeout=0.5
    ) as server:
        yield server


async def closed_with(connection: websockets.ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes the socket; its close code and reason."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(5):
            while True:
                await connection.recv()
    received = closed.value.rcvd
    assert received is not None, "the connection dropped without a close frame"
    return received.code, received.reason


def raw_socket(
    server: RunningServer, protocol: str, cookie: str | None = None
) -> websockets.connect:
    headers = {"Cookie": f"session={cookie}"} if cookie else {}
    return websockets.connect(
        server.ws_url, subprotocols=[Subprotocol(protocol)], additional_headers=headers
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_frame_that_is_not_a_protocol_message_closes_the_socket_with_4400_and_a_reason(
    server: RunningServer, client: GraphQLClient, protocol: str, frame: str
) -> None:
    await client.sign_up()
    async with raw_socket(server, protocol, client.session_cookie) as connection:
        await connection.send(frame)
        code, reason = await closed_with(connection)
    assert code == 4400
    assert reason
    await assert_still_serving(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("message", MALFORMED_OPERATIONS.values(), ids=MALFORMED_OPERATIONS.keys())
async def test_a_malformed_operation_after_init_closes_the_socket_with_4400_and_a_reason(
    server: RunningServer, client: GraphQLClient, protocol: str, message: dict[str, object]
) -> None:
    await client.sign_up()
    async with raw_socket(server, protocol, client.session_cookie) as connection:
        await connection.send(INIT)
        assert json.loads(await connection.recv())["type"] == "connection_ack"
        await connection.send(json.dumps({"type": SUBSCRIBE[protocol], **message}))
        code, reason = await closed_with(connection)
    assert code == 4400
    assert reason
    await assert_still_serving(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_text_that_is_not_json_closes_the_socket_with_4400(
    server: RunningServer, client: GraphQLClient, protocol: str
) -> None:
    await client.sign_up()
    async with raw_socket(server, protocol, client.session_cookie) as connection:
        await connection.send("{not json")
        code, reason = await closed_with(connection)
    assert (code, reason) == (4400, "WebSocket message must be valid JSON")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_second_connection_init_closes_the_socket_with_4429_and_runs_nothing_again(
    server: RunningServer, client: GraphQLClient, protocol: str
) -> None:
    await client.sign_up()
    before = subscription_total(server)
    async with raw_socket(server, protocol, client.session_cookie) as connection:
        await connection.send(INIT)
        assert json.loads(await connection.recv())["type"] == "connection_ack"
        # The first init started the socket's session watcher (one subscription).
        await wait_for_subscriber_total(server, before + 1)
        await connection.send(INIT)
        code, reason = await closed_with(connection)
    assert (code, reason) == (4429, "Too many initialisation requests")
    # Nothing the repeat could have started is left behind.
    await wait_for_subscriber_total(server, before)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_that_never_sends_connection_init_is_closed_with_4408(
    quick_init_server: RunningServer, protocol: str
) -> None:
    async with raw_socket(quick_init_server, protocol) as connection:
        # The deadline is 0.5 s; the default (10 s) would outlast closed_with's 5 s.
        code, reason = await closed_with(connection)
    assert (code, reason) == (4408, "Connection initialisation timeout")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_socket_that_sends_connection_init_in_time_stays_open_past_the_deadline(
    quick_init_server: RunningServer, protocol: str
) -> None:
    client = GraphQLClient(quick_init_server.url)
    await client.sign_up()
    async with GraphQLWebSocket.connect(
        quick_init_server.ws_url, cookie=client.session_cookie, protocol=protocol
    ) as socket:
        inbox = await socket.subscribe(INBOX)
        # Past the 0.5 s deadline the socket is still open (it would close with 4408).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(socket.closed), 1.0)
        await inbox.stop()
    await client.aclose()
