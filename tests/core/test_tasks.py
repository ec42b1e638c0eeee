"""Where work that must not stop halfway runs: its own task for cancellable callers (WebSocket
operations), the caller's task for callers that are never cancelled mid-way (HTTP requests)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from api.core.tasks import InCaller, Unfinished
from schema.context import Context


async def test_in_caller_runs_the_work_in_the_callers_task_and_unfinished_in_its_own() -> None:
    async def where() -> asyncio.Task[Any] | None:
        return asyncio.current_task()

    caller = asyncio.current_task()
    assert await InCaller().run(where()) is caller
    unfinished = Unfinished()
    assert await unfinished.run(where()) is not caller


def test_http_requests_run_sends_in_their_task_and_websocket_operations_in_their_own() -> None:
    class State:
        unfinished = Unfinished()
        in_caller = InCaller()

    state: Any = State()
    http = Context(
        request=Request({"type": "http", "headers": []}), response=Response(), state=state
    )
    socket_scope = {"type": "websocket", "headers": []}

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    socket = WebSocket(socket_scope, receive, send)
    ws = Context(request=socket, response=socket, state=state)
    assert http.unfinished is state.in_caller
    assert ws.unfinished is state.unfinished
