"""Back-pressure: a socket whose client stops reading is held, never buffered without bound.

A real client stops reading: its websockets connection pauses reading once one message waits,
and its receive buffer is tiny, so the server's unsent bytes grow until the hub marks the
socket behind. From then on nothing more is written to it; when the client reads again, the
hub refills it from the database, so it still gets every message once, in order.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import websockets
from websockets.typing import Subprotocol

from api.chat.constants import room_channel
from api.core.websocket import HIGH_WATER
from tests.chat.conftest import Pair
from tests.conftest import make_settings
from tests.support import (
    RunningServer,
    assert_exactly_once_in_order,
    running_server,
    send,
    wait_for_no_subscribers,
    wait_for_subscribers,
)

MESSAGE_ADDED = """
subscription Follow($roomId: ID!) { messageAdded(roomId: $roomId) { seq data } }
"""
BIG = "x" * 3900  # near MESSAGE_MAX_LENGTH: few messages fill a buffer


@asynccontextmanager
async def stalled_client(server: RunningServer, cookie: str) -> AsyncIterator[Any]:
    """A graphql-transport-ws client that reads only when told to (its receive buffer is tiny
    and its library stops reading once one message waits)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", server.port))
    async with websockets.connect(
        server.ws_url,
        sock=raw,
        subprotocols=[Subprotocol("graphql-transport-ws")],
        additional_headers={"Cookie": f"session={cookie}"},
        max_queue=1,
        max_size=2**22,
    ) as connection:
        await connection.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await connection.recv())["type"] == "connection_ack"
        yield connection


def _sink_socket(server: RunningServer, room_id: str) -> Any:
    channel = server.app.state.chat.hub.channels[room_channel(uuid.UUID(room_id))]
    (sink,) = channel.sinks
    return sink.socket


def _small_kernel_buffer(server: RunningServer, room_id: str) -> None:
    # The kernel would absorb megabytes before the server's own buffer grows; a small send
    # buffer on the server's side of this socket makes the test need few messages. What the
    # hub does past the high-water mark does not depend on it.
    stalled = _sink_socket(server, room_id)
    raw = stalled.transport.transport.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


async def _fill_until_behind(server: RunningServer, pair: Pair, limit: int = 3000) -> int:
    """Send big messages until the subscriber's socket is behind; how many were sent."""
    hub = server.app.state.chat.hub
    before = hub.sockets_behind
    for sent in range(1, limit + 1):
        await send(pair.alice, pair.room_id, f"{sent}:{BIG}")
        if hub.sockets_behind > before:
            return sent
    raise AssertionError(f"the socket was never marked behind after {limit} messages")


async def test_a_client_that_stops_reading_holds_at_most_the_high_water_mark_and_then_gets_every_message_once_in_order(  # noqa: E501
    server: RunningServer, pair: Pair
) -> None:
    async with stalled_client(server, pair.bob.session_cookie) as connection:
        await connection.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": MESSAGE_ADDED, "variables": {"roomId": pair.room_id}},
                }
            )
        )
        await wait_for_subscribers(server, room_channel(uuid.UUID(pair.room_id)))
        _small_kernel_buffer(server, pair.room_id)
        sent = await _fill_until_behind(server, pair)
        stalled = _sink_socket(server, pair.room_id)
        held = stalled.transport.buffered()
        # While behind, nothing more is buffered for the socket, however much is sent.
        for extra in range(100):
            await send(pair.alice, pair.room_id, f"{sent + extra + 1}:{BIG}")
        total = sent + 100
        assert stalled.behind
        assert stalled.transport.buffered() <= held <= HIGH_WATER + 8 * 1024
        # The client reads again: the socket drains and the rest comes from the database.
        seqs: list[int] = []
        while len(seqs) < total:
            message = json.loads(await connection.recv())
            assert message["type"] == "next", message
            seqs.append(message["payload"]["data"]["messageAdded"]["seq"])
        assert_exactly_once_in_order(seqs, 1, total)
        assert not stalled.behind


async def test_a_client_behind_for_longer_than_ws_behind_limit_is_closed_with_1013(
    database_url: str, broadcast_url: str, data_dir: Path, pair: Pair
) -> None:
    settings = make_settings(database_url, broadcast_url, data_dir, ws_behind_limit=0.5)
    async with (
        running_server(settings, run_migrations=False) as strict,
        stalled_client(strict, pair.bob.session_cookie) as connection,
    ):
        await connection.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": MESSAGE_ADDED, "variables": {"roomId": pair.room_id}},
                }
            )
        )
        channel = room_channel(uuid.UUID(pair.room_id))
        await wait_for_subscribers(strict, channel)
        _small_kernel_buffer(strict, pair.room_id)
        pair.alice.http.base_url = strict.url  # send through the strict server
        await _fill_until_behind(strict, pair)
        # The hub gives up on the socket: its subscription ends without the client reading.
        await wait_for_no_subscribers(strict, channel)
        assert strict.app.state.chat.hub.sockets_closed_behind == 1
        try:
            while True:
                await connection.recv()
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1013
