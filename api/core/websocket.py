"""uvicorn's WebSocket protocol, opened up for the delivery hub.

Live delivery writes one pre-encoded frame to many sockets per event. Through ASGI each write
is an awaited `send` per socket, through middleware wrappers and uvicorn's flow-control wait;
the hub instead writes to the socket's transport directly, and it needs to know when a socket
falls behind (its write buffer past a high-water mark) and when it drains again. This protocol
puts itself in the connection's ASGI scope (`scope["extensions"][SCOPE_KEY]`) and reports the
transport's pause and resume to whoever listens.
"""

from __future__ import annotations

import asyncio
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


class _Waiters:
    """Futures of whoever waits, in a list made only when somebody does (asyncio's Queue and
    Event keep a deque each from the start, about 700 bytes apiece)."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] | None = None

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class _Inbox(_Waiters):
    """A socket's received events, for its ASGI task: what uvicorn uses of asyncio.Queue
    (put_nowait, get, empty), without its four deques (about 3 KiB per socket)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        super().__init__()
        self._items: list[Any] = []

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    async def get(self) -> Any:
        while not self._items:
            await self._wait()
        # uvicorn pauses reading while an event waits, so this list holds one or two.
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class _Flag(_Waiters):
    """uvicorn's `writable` flag: what it uses of asyncio.Event (set, clear, is_set, wait)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        super().__init__()
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        self._wake()

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        # As asyncio.Event: once woken by `set`, return (even if cleared again meanwhile).
        if not self._set:
            await self._wait()


class ChatWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with direct frame writes and flow reports, and
    less kept per idle socket (10,000 of them are the target on one process)."""

    flow: FlowListener | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Same behaviour, a fraction of the memory (uvicorn only ever calls these methods).
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this right after the handshake response went out: the parsed upgrade
        # request and the response (their headers, about 4 KiB) are not needed any more; the
        # app has what it uses in its scope. websockets' parser keeps the request object for
        # the connection's lifetime (a local of its generator), so its headers are emptied.
        if self.request is not None:
            self.request.headers.clear()
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()

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
