"""strawberry's WebSocket protocol handlers, wired to the delivery hub.

The subscriptions the hub serves on its own (schema.subscriptions) are handed over without a
strawberry operation. Everything else runs through strawberry as before: for a subscription,
the handler sets `current_operation` (a ContextVar, which the operation's task inherits) to the
operation's id, document, variables and socket, so its resolver can hand the stream to the hub,
which writes each result frame itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from graphql import GraphQLError
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from schema.access import AccessLogged
from schema.context import Context
from schema.sinks import LEGACY_WS, TRANSPORT_WS, current_operation
from schema.subscriptions import HubOperations, HubRequest, hub_operation

# Close codes shared by both protocols (graphql-transport-ws defines them; the legacy protocol
# has none of its own, and clients treat 4400-4499 as "do not retry blindly").
INVALID_MESSAGE = 4400
INIT_TIMEOUT = 4408
TOO_MANY_INITS = 4429

# Message types that name an operation, and those whose payload is the operation itself.
_WITH_ID = frozenset({"subscribe", "complete", "next", "error", "start", "stop", "data"})
_OPERATIONS = frozenset({"subscribe", "start"})


def invalid_message(message: Any) -> str | None:
    """Why a decoded frame is not a protocol message (None when its shape is sound).

    strawberry indexes into frames as if they were well-formed: a number, a list, a payload
    that is a string or an id that is a number raised inside the handler, and the connection
    dropped without a close frame. Checked here, such frames close the socket with 4400.
    """
    if not isinstance(message, dict):
        return "A message must be a JSON object."
    kind = message.get("type")
    problem = None
    if not isinstance(kind, str):
        problem = "A message needs a string `type`."
    elif message.get("payload") is not None and not isinstance(message["payload"], dict):
        problem = "A message's `payload` must be an object."
    elif kind in _WITH_ID and not isinstance(message.get("id"), str):
        problem = f"A `{kind}` message needs a string `id`."
    elif kind in _OPERATIONS:
        problem = _invalid_operation(kind, message.get("payload"))
    return problem


def _invalid_operation(kind: str, payload: Any) -> str | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return f"A `{kind}` message needs a payload with a string `query`."
    for key in ("variables", "extensions"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f"`payload.{key}` must be an object."
    name = payload.get("operationName")
    if name is not None and not isinstance(name, str):
        return "`payload.operationName` must be a string."
    return None


class TransportWSHandler(AccessLogged, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws (the graphql-ws library's protocol)."""

    async def handle_message(self, message: Any) -> None:
        reason = invalid_message(message)
        if reason is not None:
            await self.handle_invalid_message(reason)
            return
        await super().handle_message(message)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub_operations = HubOperations(self, TRANSPORT_WS)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        # strawberry cancels its init deadline here but keeps the task object for the life of
        # the socket; once cancelled, nothing needs it (shutdown skips None).
        if self.connection_init_received:
            self.connection_init_timeout_task = None

    async def handle_subscribe(self, message: Any) -> None:
        if self.connection_acknowledged:
            request = self.hub_operations.take(message)
            if request is not None:
                await self._subscribe_hub(request)
                return
        token = current_operation.set(hub_operation(self, TRANSPORT_WS, message))
        try:
            await super().handle_subscribe(message)
        finally:
            current_operation.reset(token)

    async def _subscribe_hub(self, request: HubRequest) -> None:
        operation = request.operation
        # strawberry's rules for a subscribe message, counting both kinds of operation.
        if operation.id in self.operations or operation.id in self.hub_operations:
            reason = f"Subscriber for {operation.id} already exists"
            await self.websocket.close(code=4409, reason=reason)
            return
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.operations) + len(self.hub_operations) >= limit:
            error = GraphQLError("Subscription limit reached")
            await self.websocket.send_json(
                {"id": operation.id, "type": "error", "payload": [error.formatted]}
            )
            return
        self.hub_operations.start(request)

    async def handle_complete(self, message: Any) -> None:
        if not await self.hub_operations.stop(message["id"]):
            await super().handle_complete(message)

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            await self.hub_operations.close()


class LegacyWSHandler(AccessLogged, BaseGraphQLWSHandler[Context, None]):
    """graphql-ws (subscriptions-transport-ws, the legacy protocol).

    Held to the rules of graphql-transport-ws where strawberry's legacy handler has none: a
    deadline for `connection_init` (4408), one `connection_init` per socket (4429: each repeat
    ran the connect hook again and kept what it made), and malformed frames close with 4400
    instead of crashing the handler.
    """

    _init_deadline: asyncio.Task[None] | None = None
    _init_received = False

    async def handle(self) -> None:
        self._init_deadline = asyncio.create_task(self._close_unless_initialised())
        try:
            try:
                async for message in self.websocket.iter_json():
                    await self.handle_message(message)
            except NonTextMessageReceived:
                await self._close(INVALID_MESSAGE, "WebSocket message type must be text")
            except NonJsonMessageReceived:
                await self._close(INVALID_MESSAGE, "WebSocket message must be valid JSON")
        except WebSocketDisconnected:
            pass
        finally:
            self._init_deadline.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._init_deadline
            if self.keep_alive_task:
                self.keep_alive_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.keep_alive_task
            await self.cleanup()

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            await self._close(INIT_TIMEOUT, "Connection initialisation timeout")

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnected):
            await self.websocket.close(code=code, reason=reason)

    async def handle_message(self, message: Any) -> None:
        reason = invalid_message(message)
        if reason is not None:
            await self._close(INVALID_MESSAGE, reason)
            return
        await super().handle_message(message)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub_operations = HubOperations(self, LEGACY_WS)

    async def handle_connection_init(self, message: Any) -> None:
        if self._init_received:
            await self._close(TOO_MANY_INITS, "Too many initialisation requests")
            return
        self._init_received = True
        if self._init_deadline is not None:
            self._init_deadline.cancel()
        await super().handle_connection_init(message)

    async def handle_start(self, message: Any) -> None:
        if self.connection_acknowledged:
            request = self.hub_operations.take(message)
            if request is not None:
                await self._start_hub(request)
                return
        token = current_operation.set(hub_operation(self, LEGACY_WS, message))
        try:
            await super().handle_start(message)
        finally:
            current_operation.reset(token)

    async def _start_hub(self, request: HubRequest) -> None:
        operation = request.operation
        # As strawberry's handle_start: a repeated id replaces the earlier operation.
        if not await self.hub_operations.stop(operation.id):
            await self.cleanup_operation(operation.id)
        limit = self.max_subscriptions_per_connection
        if limit is not None and len(self.tasks) + len(self.hub_operations) >= limit:
            payload = {"message": "Subscription limit reached"}
            await self.websocket.send_json(
                {"type": "error", "id": operation.id, "payload": payload}
            )
            return
        self.hub_operations.start(request)

    async def handle_stop(self, message: Any) -> None:
        if await self.hub_operations.stop(message["id"]):
            # strawberry answers a stop with complete; so does the hub's side.
            await self.websocket.send_json({"type": "complete", "id": message["id"]})
            return
        await super().handle_stop(message)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            await self.hub_operations.close()
