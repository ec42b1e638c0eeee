"""roomSignals served by the delivery hub's writer.

A typing signal in a room of 200 goes to 200 sockets. Through strawberry's subscription path
that is 200 tasks woken, 200 executions of the same selection, 200 encodings and 200 writes
through the ASGI send path. Here, as for messages, each signal's result is built once per
distinct selection and its frame written straight to each socket. Signals are best effort: a
socket that is behind (its client not reading) loses the signal, and nothing is buffered for
it; the next signal, or a resubscription, brings it the current state.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from api.chat.signals import SignalView
from schema.shapes import Shape
from schema.sinks import Operation, Socket, Stream

if TYPE_CHECKING:
    from schema.hub import Hub


class SignalSink(Stream):
    """One roomSignals subscription: a listener of api.chat.signals that writes frames."""

    def __init__(
        self,
        hub: Hub,
        operation: Operation,
        shape: Shape,
        *,
        room_id: uuid.UUID,
        user_id: uuid.UUID,
        member_ids: list[uuid.UUID],
    ) -> None:
        super().__init__()
        self.hub = hub
        self.operation = operation
        self.socket: Socket = operation.socket
        self.shape = shape
        self.room_id = room_id
        self.user_id = user_id
        self.member_ids = member_ids
        self.prefix = operation.socket.prefix(operation.id)
        self.key = shape.key(operation.variables, operation.context)
        self.dropped = 0
        self.listening = False

    def put(self, signal: SignalView) -> None:
        """Write one signal's result now, or drop it (the socket is behind or closed)."""
        if self.done.done():
            return
        payload = self.hub.signal_payload(self, signal)
        if payload is None or not self.socket.write(self.prefix + payload + b"}"):
            self.dropped += 1
