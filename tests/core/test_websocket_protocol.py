"""The WebSocket protocol's lighter replacements for uvicorn's per-socket queue and flag, and
what it lets go of after the handshake."""

from __future__ import annotations

import asyncio
import contextlib

from api.core.websocket import SCOPE_KEY, ChatWebSocketProtocol, _Flag, _Inbox
from tests.support import GraphQLClient, GraphQLWebSocket, RunningServer


async def test_the_inbox_hands_out_events_in_order_and_wakes_a_waiting_receiver() -> None:
    inbox = _Inbox()
    inbox.put_nowait("connect")
    assert inbox.qsize() == 1
    assert await inbox.get() == "connect"
    assert inbox.empty()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait("receive")
    inbox.put_nowait("disconnect")
    assert await asyncio.wait_for(waiting, 1) == "receive"
    assert await inbox.get() == "disconnect"


async def test_a_cancelled_receive_leaves_the_next_event_for_the_next_receive() -> None:
    inbox = _Inbox()
    cancelled = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    inbox.put_nowait("receive")
    assert await asyncio.wait_for(inbox.get(), 1) == "receive"


async def test_the_flag_blocks_writers_while_clear_and_releases_them_when_set() -> None:
    flag = _Flag()
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    writers = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(writer.done() for writer in writers)
    flag.set()
    await asyncio.wait_for(asyncio.gather(*writers), 1)


async def test_an_open_socket_keeps_no_parsed_handshake(
    server: RunningServer, client: GraphQLClient
) -> None:
    await client.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie):
        open_sockets = [
            protocol
            for protocol in server.server.server_state.connections
            if isinstance(protocol, ChatWebSocketProtocol) and protocol.open
        ]
        assert open_sockets, "no open server-side socket found"
        for protocol in open_sockets:
            assert protocol.request is None
            assert protocol.response is None
            assert protocol.scope["extensions"][SCOPE_KEY] is protocol
