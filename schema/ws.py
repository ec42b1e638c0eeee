"""strawberry's WebSocket protocol handlers, wired to the delivery hub.

strawberry still runs each operation (parsing, validation, the subscription resolver, errors and
`complete`); what changes is how results reach the socket. Before the task of a subscribe
message starts, the handler sets `current_operation` (a ContextVar, which the task inherits) to
the operation's id, document, variables and socket, so the resolver can hand the whole stream to
the hub, which writes each result frame itself.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from api.core.websocket import SCOPE_KEY, ChatWebSocketProtocol
from schema.context import Context
from schema.hub import LEGACY_WS, TRANSPORT_WS, Operation, Socket, current_operation


def _socket(handler: Any, protocol: str) -> Socket | None:
    """The hub's view of this connection, made on its first subscription."""
    socket: Socket | None = getattr(handler, "_hub_socket", None)
    if socket is None:
        context: Context = handler.context
        hub = context.state.hub
        if hub is None:
            return None
        websocket: WebSocket = handler.websocket.ws
        transport = websocket.scope.get("extensions", {}).get(SCOPE_KEY)
        socket = Socket(
            hub,
            protocol=protocol,
            transport=transport if isinstance(transport, ChatWebSocketProtocol) else None,
            fallback=websocket.send_text,
        )
        handler._hub_socket = socket
    return socket


def _operation(handler: Any, protocol: str, message: Any) -> Operation | None:
    socket = _socket(handler, protocol)
    payload = message.get("payload") if isinstance(message, dict) else None
    if socket is None or not isinstance(payload, dict):
        return None
    operation_id, query = message.get("id"), payload.get("query")
    variables, name = payload.get("variables"), payload.get("operationName")
    if not isinstance(operation_id, str) or not isinstance(query, str):
        return None
    return Operation(
        id=operation_id,
        query=query,
        variables=variables if isinstance(variables, dict) else None,
        operation_name=name if isinstance(name, str) else None,
        socket=socket,
        context=handler.context,
    )


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws (the graphql-ws library's protocol)."""

    async def handle_subscribe(self, message: Any) -> None:
        token = current_operation.set(_operation(self, TRANSPORT_WS, message))
        try:
            await super().handle_subscribe(message)
        finally:
            current_operation.reset(token)

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            socket: Socket | None = getattr(self, "_hub_socket", None)
            if socket is not None:
                socket.close()


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """graphql-ws (subscriptions-transport-ws, the legacy protocol)."""

    async def handle_start(self, message: Any) -> None:
        token = current_operation.set(_operation(self, LEGACY_WS, message))
        try:
            await super().handle_start(message)
        finally:
            current_operation.reset(token)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            socket: Socket | None = getattr(self, "_hub_socket", None)
            if socket is not None:
                socket.close()
