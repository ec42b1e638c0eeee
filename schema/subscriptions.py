"""Subscriptions the delivery hub serves without strawberry's per-operation machinery.

`messageAdded`, `inbox`, `roomEvents` and `inboxEvents`, selected alone at the root, are most
of what sockets hold. For
those, the protocol handlers (schema.ws) hand the subscribe message here: it is checked
(document, variables, arguments, session, membership) in a short task, after which the
subscription is a sink in the hub and nothing else, with no task, generator or coroutine stack
of its own while it lives (strawberry's keeps tens of kilobytes per subscription). The hub
writes its results; errors and `complete` are sent here, in each protocol's framing, as
strawberry sends them for an error raised by a subscription resolver.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    located_error,
)
from graphql.execution.values import get_argument_values, get_variable_values
from starlette.websockets import WebSocket

from api.chat.service import parse_room_id
from api.core.websocket import SCOPE_KEY, ChatWebSocketProtocol
from schema.context import Context
from schema.errors import format_errors
from schema.hub import Hub
from schema.signal_sinks import SignalSink
from schema.sinks import LEGACY_WS, Ended, Operation, Sink, Socket

# What the hub serves for one operation: a log subscription, or a room's signals.
AnySink = Sink | SignalSink

log = logging.getLogger(__name__)


def hub_socket(handler: Any, protocol: str) -> Socket | None:
    """The hub's view of a handler's connection, made on its first subscription."""
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


def hub_operation(handler: Any, protocol: str, message: Any) -> Operation | None:
    """A subscribe (or start) message as the hub sees it."""
    socket = hub_socket(handler, protocol)
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


HUB_FIELDS = frozenset({"messageAdded", "inbox", "roomEvents", "inboxEvents", "roomSignals"})
# The root fields that stream every log entry rather than only posted messages.
EVENT_FIELDS = frozenset({"roomEvents", "inboxEvents"})


@dataclass(frozen=True, slots=True)
class HubRequest:
    """A subscribe message the hub serves: the operation, its definition and its root field."""

    operation: Operation
    node: OperationDefinitionNode
    field: FieldNode

    @property
    def key(self) -> str:
        """The root field's response key."""
        return self.field.alias.value if self.field.alias else self.field.name.value


def _hub_request(operation: Operation) -> HubRequest | None:
    """The request, when the hub serves this operation on its own."""
    prepared = operation.socket.hub.documents.prepare(operation.query)
    if prepared.errors is not None:
        return None  # strawberry reports them
    node = prepared.operation(operation.operation_name)
    if node is None or node.operation is not OperationType.SUBSCRIPTION:
        return None
    selections = node.selection_set.selections
    if len(selections) != 1:
        return None
    (field,) = selections
    if not isinstance(field, FieldNode) or field.directives or field.name.value not in HUB_FIELDS:
        return None
    return HubRequest(operation, node, field)


class HubOperations:
    """The hub-served operations of one connection, for one protocol handler."""

    def __init__(self, handler: Any, protocol: str) -> None:
        self.handler = handler
        self.protocol = protocol
        self.sinks: dict[str, AnySink] = {}
        self.starting: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self.sinks) + len(self.starting)

    def __contains__(self, operation_id: object) -> bool:
        return operation_id in self.sinks or operation_id in self.starting

    def take(self, message: Any) -> HubRequest | None:
        """The request, if the hub serves it; None leaves it to strawberry."""
        operation = hub_operation(self.handler, self.protocol, message)
        return _hub_request(operation) if operation is not None else None

    def start(self, request: HubRequest) -> None:
        task = asyncio.create_task(self._start(request))
        self.starting[request.operation.id] = task

    async def _start(self, request: HubRequest) -> None:
        operation, field, key = request.operation, request.field, request.key
        hub = operation.socket.hub
        try:
            sink = await self._open(hub, request)
        except asyncio.CancelledError:
            raise
        except GraphQLError as error:
            if error.path is None and error.original_error is None:
                # Variables that do not fit their definitions: the operation never ran.
                await self._refuse(operation.id, [error])
                return
            await self._fail(operation.id, error)
            return
        except Exception as error:  # noqa: BLE001 - reported on the stream, like a resolver's
            await self._fail(operation.id, located_error(error, [field], [key]))
            return
        finally:
            self.starting.pop(operation.id, None)
        self.sinks[operation.id] = sink
        sink.on_end = lambda ended, error: self._ended(ended, error, key)
        try:
            await hub.attach(sink)
        except BaseException:
            self.sinks.pop(operation.id, None)
            await hub.detach(sink)
            raise

    async def _open(self, hub: Hub, request: HubRequest) -> AnySink:
        operation, field, key = request.operation, request.field, request.key
        variables = get_variable_values(
            hub.schema, request.node.variable_definitions or (), operation.variables or {}
        )
        if isinstance(variables, list):
            raise variables[0]
        root = hub.schema.subscription_type
        assert root is not None
        definition = root.fields[field.name.value]
        try:
            arguments = get_argument_values(definition, field, variables)
            auth = await operation.context.require_auth()
            name = field.name.value
            events = name in EVENT_FIELDS
            if name == "roomSignals":
                return await hub.open_signals(
                    operation=operation,
                    user_id=auth.user.id,
                    room_id=parse_room_id(arguments["roomId"]),
                )
            if name in ("inbox", "inboxEvents"):
                return await hub.open_inbox(
                    operation=operation, user_id=auth.user.id, events=events
                )
            return await hub.open_room(
                operation=operation,
                user_id=auth.user.id,
                room_id=parse_room_id(arguments["roomId"]),
                after=arguments.get("after"),
                events=events,
            )
        except GraphQLError as error:
            raise located_error(error, [field], [key]) from None
        except Exception as error:
            raise located_error(error, [field], [key]) from error

    def _ended(self, sink: AnySink, error: BaseException | None, key: str) -> None:
        operation_id = sink.operation.id
        if self.sinks.get(operation_id) is not sink:
            return
        del self.sinks[operation_id]
        task = asyncio.create_task(self._finish(sink, error, key))
        task.add_done_callback(_log_failure)

    async def _finish(self, sink: AnySink, error: BaseException | None, key: str) -> None:
        await sink.socket.hub.detach(sink)
        operation_id = sink.operation.id
        if isinstance(error, Exception) and not isinstance(error, Ended):
            await self._fail(operation_id, located_error(error, None, [key]))
        else:
            await self._send({"id": operation_id, "type": "complete"})

    async def stop(self, operation_id: str) -> bool:
        """Stop one operation the client completed; False when it is not the hub's."""
        starting = self.starting.pop(operation_id, None)
        if starting is not None:
            starting.cancel()
            return True
        sink = self.sinks.pop(operation_id, None)
        if sink is None:
            return False
        await sink.socket.hub.detach(sink)
        return True

    async def close(self) -> None:
        """The connection ended: stop everything."""
        for task in list(self.starting.values()):
            task.cancel()
        self.starting.clear()
        sinks, self.sinks = list(self.sinks.values()), {}
        for sink in sinks:
            await sink.socket.hub.detach(sink)
        socket: Socket | None = getattr(self.handler, "_hub_socket", None)
        if socket is not None:
            socket.close()

    async def _fail(self, operation_id: str, error: GraphQLError) -> None:
        """A result with the error, then the end of the stream (as strawberry reports an error
        raised by a subscription resolver)."""
        format_errors([error])
        payload = {"data": None, "errors": [error.formatted]}
        if self.protocol == LEGACY_WS:
            await self._send({"type": "data", "id": operation_id, "payload": payload})
        else:
            await self._send({"id": operation_id, "type": "next", "payload": payload})
        await self._send({"id": operation_id, "type": "complete"})

    async def _refuse(self, operation_id: str, errors: list[GraphQLError]) -> None:
        """An operation refused before it ran (the protocol's error message)."""
        format_errors(errors)
        message: dict[str, Any] = {"type": "error", "id": operation_id}
        if self.protocol == LEGACY_WS:
            message["payload"] = errors[0].formatted
        else:
            message["payload"] = [error.formatted for error in errors]
        await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.handler.send_message(message)
        except Exception as error:  # noqa: BLE001 - the socket is gone: nothing to tell
            log.debug("could not send %s: %s", message.get("type"), error)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("finishing a subscription failed", exc_info=task.exception())
