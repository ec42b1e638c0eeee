"""uvicorn's WebSocket protocol, opened up for the delivery hub.

Live delivery writes one pre-encoded frame to many sockets per event. Through ASGI each write
is an awaited `send` per socket, through middleware wrappers and uvicorn's flow-control wait;
the hub instead writes to the socket's transport directly, and it needs to know when a socket
falls behind (its write buffer past a high-water mark) and when it drains again. This protocol
puts itself in the connection's ASGI scope (`scope["extensions"][SCOPE_KEY]`) and reports the
transport's pause and resume to whoever listens.
"""

from __future__ import annotations

from typing import Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

SCOPE_KEY = "chat.socket"

# A socket whose unsent data passes this many bytes is behind: the hub stops writing to it and
# refills it from the database once it drains below the low mark. Bounded this way, a client
# that stops reading holds at most this much of the server's memory.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class FlowListener(Protocol):
    def paused(self) -> None: ...

    def resumed(self) -> None: ...


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (server to client, RFC 6455 §5.2)."""
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + data
    return b"\x81\x7f" + size.to_bytes(8, "big") + data


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with direct frame writes and flow reports."""

    flow: FlowListener | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope.setdefault("extensions", {})[SCOPE_KEY] = self
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.flow is not None:
            self.flow.paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.flow is not None:
            self.flow.resumed()

    @property
    def open(self) -> bool:
        """Whether frames can still be written."""
        return (
            self.handshake_complete
            and not self.close_sent
            and not self.transport.is_closing()
            and self.conn.state is State.OPEN
        )

    def buffered(self) -> int:
        """Bytes written but not yet sent to the peer."""
        size: int = self.transport.get_write_buffer_size()
        return size

    def write_text(self, data: bytes) -> None:
        """Write one text frame now (the caller checked `open`)."""
        if self.conn.extensions:
            # Negotiated extensions (per-message deflate) must see every frame.
            self.conn.send_text(data)
            self.transport.write(b"".join(self.conn.data_to_send()))
        else:
            self.transport.write(text_frame(data))
