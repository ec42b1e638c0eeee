"""The hub's view of sockets and subscriptions: a Socket (writes frames, knows when it is
behind), a Sink per subscription (how far it has delivered, how it refills from the store), and
the Channel of pub/sub a sink follows. The Hub (schema.hub) moves events between them.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from api.chat import service as chat
from api.chat.views import JOINED, LEFT, POSTED, EventView
from api.core.errors import Forbidden
from api.core.pubsub import Subscription
from api.core.websocket import ChatWebSocketProtocol
from schema.shapes import Shape

if TYPE_CHECKING:
    from schema.hub import Hub

log = logging.getLogger(__name__)

# Rows per store read while refilling: small, so a refill never holds much in memory and
# yields the loop between chunks.
REFILL_CHUNK = 20

# Seconds a socket closed for being behind may take to flush before it is cut.
ABORT_AFTER_CLOSE = 10.0

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


@dataclass(slots=True)
class Operation:
    """One subscribe message on one socket, as the protocol handler received it."""

    id: str
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    socket: Socket
    context: Any


# Set by the protocol handlers around the task that runs each operation (schema.ws), so the
# subscription resolvers can hand their operation to the hub.
current_operation: ContextVar[Operation | None] = ContextVar("current_operation", default=None)


class Ended(Exception):
    """The hub ended a subscription on its own (shutdown); the stream completes."""


class Socket:
    """One WebSocket connection as the hub sees it: its sinks, and whether it is behind."""

    def __init__(
        self,
        hub: Hub,
        *,
        protocol: str,
        transport: ChatWebSocketProtocol | None,
        fallback: Callable[[str], Awaitable[None]],
    ) -> None:
        self.hub = hub
        self.protocol = protocol
        self.transport = transport
        self._fallback = fallback
        self._pending: list[bytes] = []
        self._flushing: asyncio.Task[None] | None = None
        self.sinks: set[Sink] = set()
        self.refilling = asyncio.Lock()
        self.behind = False
        self._behind_timer: asyncio.TimerHandle | None = None
        if transport is not None:
            transport.flow = self

    def prefix(self, operation_id: str) -> bytes:
        """The start of this protocol's result frame for an operation, up to the payload."""
        op = orjson.dumps(operation_id)
        if self.protocol == LEGACY_WS:
            return b'{"type":"data","id":' + op + b',"payload":'
        return b'{"id":' + op + b',"type":"next","payload":'

    def write(self, frame: bytes) -> bool:
        """Write a frame now; False when the socket is behind or closed (nothing is kept)."""
        if self.behind:
            return False
        transport = self.transport
        if transport is None:
            return self._write_fallback(frame)
        if not transport.open:
            return False
        # Past the high-water mark the transport calls pause_writing at once, through the
        # protocol to `paused`: from the next frame on, the socket is behind.
        transport.write_text(frame)
        return True

    def _write_fallback(self, frame: bytes) -> bool:
        # Not under our uvicorn protocol (another ASGI server): frames go through ASGI sends,
        # in order, from one task per socket, with the same bound on what waits.
        size = sum(len(pending) for pending in self._pending)
        if size + len(frame) > self.hub.fallback_high_water:
            self.paused()
            return False
        self._pending.append(frame)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        return True

    async def _flush(self) -> None:
        while self._pending:
            frame = self._pending.pop(0)
            try:
                await self._fallback(frame.decode())
            except Exception:  # noqa: BLE001 - a closed socket ends its sinks elsewhere
                self._pending.clear()
                return
        if self.behind:
            self.resumed()

    def paused(self) -> None:
        """The socket's unsent data passed the high-water mark."""
        if self.behind:
            return
        self.behind = True
        self.hub.sockets_behind += 1
        self._behind_timer = asyncio.get_running_loop().call_later(
            self.hub.behind_limit, self._give_up
        )
        for sink in self.sinks:
            sink.live = False

    def resumed(self) -> None:
        """The socket drained below the low-water mark: refill every sink from its seq."""
        if not self.behind:
            return
        self.behind = False
        if self._behind_timer is not None:
            self._behind_timer.cancel()
            self._behind_timer = None
        for sink in list(self.sinks):
            sink.refill()

    def _give_up(self) -> None:
        self._behind_timer = None
        if not self.behind or self.transport is None:
            return
        log.info("closing a socket that stayed behind for %.0f s", self.hub.behind_limit)
        self.hub.sockets_closed_behind += 1
        # 1013 (try again later): the client reconnects and resumes from its last cursor.
        self.transport.queue.put_nowait({"type": "websocket.disconnect", "code": 1013})
        transport = self.transport.transport
        if self.transport.open:
            self.transport.conn.send_close(1013, "too far behind; resume from your cursor")
            transport.write(b"".join(self.transport.conn.data_to_send()))
            self.transport.close_sent = True
        # close() flushes first, which a client that reads nothing never lets happen: abort
        # after a grace period, so what it left unread is freed either way.
        transport.close()
        asyncio.get_running_loop().call_later(ABORT_AFTER_CLOSE, transport.abort)

    def close(self) -> None:
        """The connection ended."""
        if self._behind_timer is not None:
            self._behind_timer.cancel()
            self._behind_timer = None
        if self.transport is not None:
            self.transport.flow = None
        self._pending.clear()


class Stream:
    """What every subscription the hub serves has: the future its handler waits on, and how it
    ends (messages: Sink; signals: schema.signal_sinks.SignalSink)."""

    done: asyncio.Future[None]
    # Set when it is served without a task of its own (schema.subscriptions): called once it
    # ends, with the error if any.
    on_end: Callable[[Any, BaseException | None], None] | None

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.on_end = None

    def end(self, error: BaseException | None = None) -> None:
        """Finish the subscription: with an error (sent as the stream's last result), or not."""
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
            self.done.exception()  # retrieved: the handler reports it
        if self.on_end is not None:
            self.on_end(self, error)


class Sink(Stream):
    """One subscription: where its frames go, and how far it has delivered."""

    def __init__(
        self,
        hub: Hub,
        operation: Operation,
        shape: Shape,
        channel: Channel,
        *,
        user_id: uuid.UUID,
        events: bool,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.operation = operation
        self.user_id = user_id
        # Every log entry (roomEvents, inboxEvents), or only posted messages (messageAdded,
        # inbox), which pass the other entries by without a result.
        self.events = events
        self.socket = operation.socket
        self.shape = shape
        self.channel = channel
        self.prefix = operation.socket.prefix(operation.id)
        self.key = shape.key(operation.variables, operation.context)
        self.live = False
        self._refilling: asyncio.Task[None] | None = None
        self._refill_again = False

    # --- what subclasses define -------------------------------------------------------------

    def next_seq(self, event: EventView) -> int:
        raise NotImplementedError

    def delivered(self, event: EventView) -> None:
        raise NotImplementedError

    def wants(self, event: EventView) -> bool:
        """Whether the event is a result of this subscription (or only moves it on)."""
        return self.events or (event.kind == POSTED and event.message is not None)

    def passed(self, event: EventView) -> None:
        """The subscription is past an event (delivered, or not one of its results)."""
        self.delivered(event)
        self.after(event)

    def after(self, event: EventView) -> None:
        """What an event does to the subscription itself, once it is past it."""

    async def _catch_up(self) -> None:
        raise NotImplementedError

    def caught_up(self) -> bool:
        raise NotImplementedError

    # --- delivery --------------------------------------------------------------------------

    def emit(self, payload: bytes, event: EventView) -> None:
        """Write one result; on success the sink is past `event`."""
        if self.socket.write(self.prefix + payload + b"}"):
            self.passed(event)
        else:
            self.live = False

    def refill(self) -> None:
        """Catch up from the store (in the background), then go live."""
        self.live = False
        if self.done.done():
            return
        if self._refilling is not None and not self._refilling.done():
            self._refill_again = True
            return
        self._refilling = asyncio.create_task(self._refill())

    async def _refill(self) -> None:
        try:
            # One refill at a time per socket: a socket with many subscriptions catching up
            # holds one chunk of rows, not one per subscription.
            async with self.socket.refilling:
                while True:
                    self._refill_again = False
                    if self.socket.behind or self.done.done():
                        return
                    await self._catch_up()
                    if self.socket.behind or self.done.done():
                        return
                    if not self._refill_again and self.caught_up():
                        # Nothing the channel has seen is missing: live from the next event on.
                        self.live = True
                        return
        except Exception as error:  # noqa: BLE001 - the stream ends with this error
            self.end(error)

    async def replay(
        self, room_id: uuid.UUID, *, after_seq: int, up_to_seq: int | None = None
    ) -> bool:
        """Write a room's stored log entries after a seq (up to another), in chunks; False
        when the socket fell behind or the subscription ended (the rest waits for the next
        refill, if any)."""
        while True:
            chunk = await chat.read_events_after(
                db=self.hub.db,
                room_id=room_id,
                after_seq=after_seq,
                up_to_seq=up_to_seq,
                limit=REFILL_CHUNK,
                directory=self.hub.directory,
            )
            for event in chunk:
                after_seq = event.seq
                if event.seq < self.next_seq(event):
                    continue  # delivered live meanwhile
                if self.socket.behind or self.done.done():
                    return False
                if self.wants(event):
                    self.emit(await self.hub.result(self, event), event)
                else:
                    self.passed(event)
            if len(chunk) < REFILL_CHUNK:
                return not (self.socket.behind or self.done.done())

    def close(self) -> None:
        self.live = False
        if self._refilling is not None:
            self._refilling.cancel()


class RoomSink(Sink):
    """messageAdded / roomEvents(roomId, after): one room's log in seq order."""

    def __init__(
        self,
        hub: Hub,
        operation: Operation,
        shape: Shape,
        channel: Channel,
        *,
        user_id: uuid.UUID,
        events: bool,
        room_id: uuid.UUID,
        after_seq: int,
    ) -> None:
        super().__init__(hub, operation, shape, channel, user_id=user_id, events=events)
        self.room_id = room_id
        self.seq = after_seq

    def next_seq(self, event: EventView) -> int:
        return self.seq + 1

    def delivered(self, event: EventView) -> None:
        self.seq = event.seq

    def after(self, event: EventView) -> None:
        # Removed or departed: the room is FORBIDDEN from this entry on (roomEvents has just
        # delivered it).
        if event.kind == LEFT and event.member is not None and event.member.id == self.user_id:
            self.end(Forbidden("You are no longer a member of this room."))

    def caught_up(self) -> bool:
        return self.seq >= self.channel.seen.get(self.room_id, 0)

    async def _catch_up(self) -> None:
        await self.replay(self.room_id, after_seq=self.seq)


class InboxSink(Sink):
    """inbox / inboxEvents: every room of one user, each room in seq order, following
    membership: a room joined starts at the user's MemberJoined, a room left ends with their
    MemberLeft (nothing more is published to them)."""

    def __init__(
        self,
        hub: Hub,
        operation: Operation,
        shape: Shape,
        channel: Channel,
        *,
        user_id: uuid.UUID,
        events: bool,
        start: dict[uuid.UUID, int],
    ) -> None:
        super().__init__(hub, operation, shape, channel, user_id=user_id, events=events)
        self.seqs = start

    def next_seq(self, event: EventView) -> int:
        seq = self.seqs.get(event.room_id)
        if _joins(event, self.user_id) and (seq is None or event.seq > seq):
            return event.seq  # a room the user has just (re)joined starts here
        if seq is None:
            return 1  # a new direct room starts at its beginning
        return seq + 1

    def delivered(self, event: EventView) -> None:
        self.seqs[event.room_id] = event.seq

    def caught_up(self) -> bool:
        return all(self.seqs.get(room_id, 0) >= seq for room_id, seq in self.channel.seen.items())

    async def _catch_up(self) -> None:
        # What was committed since: the user's rooms now (rooms joined since the start
        # included, each from the user's MemberJoined), then rooms left since, up to the
        # user's MemberLeft.
        db, user_id = self.hub.db, self.user_id
        current = await chat.inbox_positions(db=db, user_id=user_id)
        for room_id, (last_seq, joined_seq) in current.items():
            start = max(self.seqs.get(room_id, 0), joined_seq - 1 if joined_seq else 0)
            if start < last_seq:
                if start > self.seqs.get(room_id, 0):
                    self.seqs[room_id] = start  # entries from before the user joined
                if not await self.replay(room_id, after_seq=start, up_to_seq=last_seq):
                    return
        for room_id, seen in list(self.seqs.items()):
            if room_id in current:
                continue
            left = await chat.left_at(db=db, room_id=room_id, user_id=user_id, after_seq=seen)
            if left is not None and not await self.replay(room_id, after_seq=seen, up_to_seq=left):
                return


def _joins(event: EventView, user_id: uuid.UUID) -> bool:
    return event.kind == JOINED and event.member is not None and event.member.id == user_id


class Channel:
    """One pub/sub channel of this process and the sinks that follow it."""

    def __init__(self, name: str, room_id: uuid.UUID | None) -> None:
        self.name = name
        self.room_id = room_id
        self.sinks: set[Sink] = set()
        # The highest seq seen per room since the channel was joined: a refill is complete
        # once it has delivered this far.
        self.seen: dict[uuid.UUID, int] = {}
        self.subscription: Subscription | None = None
        self.joined: asyncio.Future[None] | None = None
