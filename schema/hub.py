"""The delivery hub: one per process, between pub/sub and the sockets.

Per event it decodes the payload once, executes each distinct subscription selection once
(selections that read viewer-dependent fields are keyed by viewer), encodes the `next` payload
once, and writes each subscriber's frame (that payload with its operation id spliced in)
straight to the socket. No task, queue or generator per subscriber.

Exactly once and in order (ARCHITECTURE.md, "Delivery without loss or duplicates"): each
subscription (a sink) knows the last seq it delivered. A live event with the next seq is
written; an older one is dropped; a newer one means something was missed, and the sink refills
from the database. A sink also refills when it starts (replay after its cursor), after a
RESYNC (broker reconnect), and when its socket drains after falling behind: while a socket is
behind (its unsent bytes past a high-water mark) nothing more is buffered for it, and a socket
that stays behind too long is closed with 1013 (try again later); clients resume by cursor.
A refill reads the store in small chunks and goes live once it has caught up with what the
channel has seen, in one step with no await in between, so no event falls between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    TypeInfo,
    TypeInfoVisitor,
    VariableNode,
    Visitor,
    execute,
    visit,
)

from api.chat import service as chat
from api.chat import signals as signals_service
from api.chat.constants import room_channel, user_channel
from api.chat.views import JOINED, LEFT, POSTED, EventView, decode_message_cursor
from api.core.db import Database
from api.core.errors import BadUserInput, Forbidden
from api.core.pubsub import RESYNC, PubSub, Subscription
from api.core.tasks import Changes
from api.core.websocket import ChatWebSocketProtocol
from api.users.cache import UserDirectory
from schema.documents import MAX_CACHED_DOCUMENT_BYTES, Documents
from schema.errors import format_errors
from schema.execution import PLAN_ERRORS, PlainExecutor, Plan, Plans, event_plan

if TYPE_CHECKING:
    from schema.signal_sinks import SignalSink

log = logging.getLogger(__name__)

# Rows per store read while refilling: small, so a refill never holds much in memory and
# yields the loop between chunks.
REFILL_CHUNK = 20
# Metadata key marking a strawberry field whose value depends on who asks (Reaction.me,
# Room.unreadCount): selections that read one are never shared between viewers.
VIEWER_DEPENDENT = "viewer_dependent"

# Seconds a socket closed for being behind may take to flush before it is cut.
ABORT_AFTER_CLOSE = 10.0

# The root field each kind of sink serves: (sink class, every log entry or only messages).
SUBSCRIPTION_FIELDS = {
    ("RoomSink", False): "messageAdded",
    ("RoomSink", True): "roomEvents",
    ("InboxSink", False): "inbox",
    ("InboxSink", True): "inboxEvents",
}

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


@dataclass(frozen=True, slots=True)
class Shape:
    """What makes two subscribers' results the same: the document, the operation, the values
    of the variables its selection reads, and (for viewer-dependent selections) the viewer."""

    document: DocumentNode
    operation_name: str | None
    selection_variables: tuple[str, ...]
    per_viewer: bool
    # (response key, plan) when the result is the event's plain selection and nothing else:
    # then an event's result needs no execution at all (schema.execution.event_plan).
    direct: tuple[str, Plan] | None = None


class Shapes:
    """Shapes by (document text, operation name), computed once; bounded in bytes like the
    document cache (the keys hold whole documents), and large documents are not kept."""

    def __init__(
        self,
        schema: GraphQLSchema,
        plans: Plans | None = None,
        max_bytes: int = 4 * 1024 * 1024,
        max_document_bytes: int = MAX_CACHED_DOCUMENT_BYTES,
    ) -> None:
        self.schema = schema
        self.plans = plans
        self.max_bytes = max_bytes
        self.max_document_bytes = max_document_bytes
        self._shapes: OrderedDict[tuple[str, str | None], Shape] = OrderedDict()
        self._bytes = 0

    @property
    def cached_bytes(self) -> int:
        """The size of the cached documents' text."""
        return self._bytes

    def of(self, document: DocumentNode, query: str, operation_name: str | None) -> Shape:
        key = (query, operation_name)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._compute(document, operation_name)
            if len(query) <= self.max_document_bytes:
                self._shapes[key] = shape
                self._bytes += len(query)
                while self._bytes > self.max_bytes:
                    (evicted, _), _ = self._shapes.popitem(last=False)
                    self._bytes -= len(evicted)
        return shape

    def _compute(self, document: DocumentNode, operation_name: str | None) -> Shape:
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        operation = next(
            (
                op
                for op in operations
                if operation_name is None
                or (op.name is not None and op.name.value == operation_name)
            ),
            operations[0],
        )
        variables = _SelectionVariables()
        viewer = _ViewerFields(TypeInfo(self.schema))
        # The root field's own arguments (roomId, after) only choose which events arrive;
        # everything below it, and directives, decide what a result holds.
        for selection in operation.selection_set.selections:
            if isinstance(selection, FieldNode):
                for directive in selection.directives or ():
                    visit(directive, variables)
                if selection.selection_set is not None:
                    visit(selection.selection_set, variables)
            else:
                visit(selection, variables)
        fragments = [d for d in document.definitions if not isinstance(d, OperationDefinitionNode)]
        for fragment in fragments:
            visit(fragment, variables)
        visit(document, TypeInfoVisitor(viewer.type_info, viewer))
        return Shape(
            document=document,
            operation_name=operation_name,
            selection_variables=tuple(sorted(variables.names)),
            per_viewer=viewer.found,
            direct=event_plan(self.plans, self.schema, operation),
        )


class _SelectionVariables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


class _ViewerFields(Visitor):
    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.found = False

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        field = self.type_info.get_field_def()
        definition = field.extensions.get("strawberry-definition") if field else None
        metadata = getattr(definition, "metadata", None) or {}
        if metadata.get(VIEWER_DEPENDENT):
            self.found = True


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


class Sink:
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
        variables = operation.variables or {}
        viewer = getattr(operation.context, "viewer_id", None) if shape.per_viewer else None
        self.key = (
            id(shape),
            tuple(_hashable(variables.get(name)) for name in shape.selection_variables),
            viewer,
        )
        self.live = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.on_end: Callable[[Sink, BaseException | None], None] | None = None
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

    def end(self, error: BaseException | None = None) -> None:
        """Finish the subscription: with an error (sent as the stream's last result), or not."""
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)
        if self.on_end is not None:
            # Served without a task of its own (schema.ws): its handler finishes the stream.
            if error is not None:
                self.done.exception()  # retrieved: nobody awaits this future
            self.on_end(self, error)

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


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return value


class Hub:
    """The delivery hub of one process (built by the app's lifespan)."""

    def __init__(
        self,
        *,
        schema: GraphQLSchema,
        documents: Documents,
        plans: Plans | None,
        db: Database,
        pubsub: PubSub,
        directory: UserDirectory | None,
        to_message: Callable[[Any], Any],
        to_event: Callable[[EventView], Any],
        to_signal: Callable[[Any], Any] | None = None,
        signals: Any = None,
        behind_limit: float = 30.0,
        fallback_high_water: int = 64 * 1024,
    ) -> None:
        self.schema = schema
        self.documents = documents
        self.db = db
        self.pubsub = pubsub
        self.directory = directory
        self.to_message = to_message
        self.to_event = to_event
        self.to_signal = to_signal
        # api.chat.signals.Signals: roomSignals subscriptions listen there (schema.signal_sinks).
        self.signals = signals
        self._last_signal: Any = None
        self._signal_payloads: dict[Any, bytes] = {}
        self.behind_limit = behind_limit
        self.fallback_high_water = fallback_high_water
        self.shapes = Shapes(schema, plans)
        self.channels: dict[str, Channel] = {}
        self._events: asyncio.Queue[tuple[Channel, Any]] = asyncio.Queue()
        self._backlog = 0  # events queued for, or being delivered by, the dispatcher task
        self._last_payload: str | None = None
        self._last_event: EventView | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self.sockets_behind = 0
        self.sockets_closed_behind = 0
        self.signal_sinks = 0
        self.deliveries = 0
        self.resync_refills = 0
        # Called with the seconds from an event's commit to its writes, once per event and
        # result shape (never per socket); set by the app when metrics are on.
        self.observe_latency: Callable[[float], None] | None = None
        # Signalled whenever a subscription starts or ends.
        self.changes = Changes()

    def start(self) -> None:
        """Start dispatching (the lifespan calls this)."""
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="delivery-hub")

    async def stop(self) -> None:
        """End every subscription and stop dispatching."""
        for channel in list(self.channels.values()):
            for sink in list(channel.sinks):
                sink.end(Ended())
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher

    @property
    def sink_count(self) -> int:
        """How many subscriptions the hub serves."""
        return sum(len(channel.sinks) for channel in self.channels.values())

    def subscription_counts(self) -> dict[str, int]:
        """Active subscriptions by root field (read at scrape time, never per delivery)."""
        counts = dict.fromkeys(SUBSCRIPTION_FIELDS.values(), 0)
        for channel in self.channels.values():
            for sink in channel.sinks:
                field = SUBSCRIPTION_FIELDS.get((type(sink).__name__, sink.events), "other")
                counts[field] = counts.get(field, 0) + 1
        counts["roomSignals"] = self.signal_sinks
        return counts

    def subscribers(self, channel_name: str) -> int:
        """How many subscriptions follow a channel and receive what is published on it."""
        channel = self.channels.get(channel_name)
        if channel is None or channel.joined is None or not channel.joined.done():
            return 0
        return len(channel.sinks)

    async def changed(self) -> None:
        """Wait until a subscription starts or ends."""
        await self.changes.wait()

    # --- following -------------------------------------------------------------------------

    async def follow_room(
        self,
        *,
        operation: Operation,
        user_id: uuid.UUID,
        room_id: uuid.UUID,
        after: str | None,
        events: bool = False,
    ) -> None:
        """Stream a room's messages (or every log entry) after `after` (or from now) to the
        operation's socket until the subscription ends; raises what ended it with an error."""
        sink = await self.open_room(
            operation=operation, user_id=user_id, room_id=room_id, after=after, events=events
        )
        await self._run(sink)

    async def follow_inbox(
        self, *, operation: Operation, user_id: uuid.UUID, events: bool = False
    ) -> None:
        """Stream every new message (or log entry) of the user's rooms, rooms joined later
        included."""
        await self._run(await self.open_inbox(operation=operation, user_id=user_id, events=events))

    async def open_room(
        self,
        *,
        operation: Operation,
        user_id: uuid.UUID,
        room_id: uuid.UUID,
        after: str | None,
        events: bool = False,
    ) -> Sink:
        """A room's subscription, checked (membership, cursor) but not yet attached."""
        after_seq = decode_message_cursor(after, room_id=room_id) if after is not None else None
        last_seq = await chat.room_position(db=self.db, user_id=user_id, room_id=room_id)
        if after_seq is not None and after_seq > last_seq:
            # Taken at face value it would silence every live message up to it.
            raise BadUserInput("That cursor is past the room's last entry.")
        # Without a cursor the stream starts where the room stood when the request arrived,
        # so a message sent once the subscription is in place is never taken for an older one.
        start = last_seq if after_seq is None else after_seq
        channel = self._channel(room_channel(room_id), room_id)
        shape = self._shape(operation)
        return RoomSink(
            self,
            operation,
            shape,
            channel,
            user_id=user_id,
            events=events,
            room_id=room_id,
            after_seq=start,
        )

    async def open_inbox(
        self, *, operation: Operation, user_id: uuid.UUID, events: bool = False
    ) -> Sink:
        """A user's inbox subscription, not yet attached."""
        positions = await chat.inbox_positions(db=self.db, user_id=user_id)
        start = {room_id: last_seq for room_id, (last_seq, _) in positions.items()}
        channel = self._channel(user_channel(user_id), None)
        shape = self._shape(operation)
        return InboxSink(
            self, operation, shape, channel, user_id=user_id, events=events, start=start
        )

    async def open_signals(
        self, *, operation: Operation, user_id: uuid.UUID, room_id: uuid.UUID
    ) -> SignalSink:
        """A room's signals subscription, checked (membership) but not yet listening."""
        from schema.signal_sinks import SignalSink

        members = await signals_service.room_members_for(self.db, user_id=user_id, room_id=room_id)
        return SignalSink(
            self,
            operation,
            self._shape(operation),
            room_id=room_id,
            user_id=user_id,
            member_ids=members,
        )

    async def _listen_signals(self, sink: SignalSink) -> None:
        sink.listening = True
        self.signal_sinks += 1
        self.changes.notify()
        # The room's current state is written first, then every change as it comes.
        await self.signals.listen(
            room_id=sink.room_id, user_id=sink.user_id, member_ids=sink.member_ids, listener=sink
        )

    def signal_payload(self, sink: SignalSink, signal: Any) -> bytes | None:
        """A signal's encoded result for a sink's selection: built once per distinct
        selection for all the room's subscribers (a signal goes to them one after another)."""
        if signal is not self._last_signal:
            assert self.to_signal is not None
            self._last_signal = signal
            self._signal_payloads = {None: self.to_signal(signal)}
        payload = self._signal_payloads.get(sink.key)
        if payload is None:
            payload = self._result_now(sink, self._signal_payloads[None])  # type: ignore[arg-type]
            if payload is not None:
                self._signal_payloads[sink.key] = payload
        return payload

    def _shape(self, operation: Operation) -> Shape:
        prepared = self.documents.prepare(operation.query)
        # strawberry validated this document before the resolver ran.
        assert prepared.document is not None
        return self.shapes.of(prepared.document, operation.query, operation.operation_name)

    def _channel(self, name: str, room_id: uuid.UUID | None) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, room_id)
        return channel

    async def _run(self, sink: Sink) -> None:
        try:
            await self.attach(sink)
            await sink.done
        except Ended:
            return
        finally:
            await self.detach(sink)

    async def attach(self, sink: Sink | SignalSink) -> None:
        """Start delivering to a sink: join its channel, then refill it from its seq."""
        from schema.signal_sinks import SignalSink  # it builds on this module's classes

        if isinstance(sink, SignalSink):
            await self._listen_signals(sink)
            return
        channel, socket = sink.channel, sink.socket
        if self.channels.get(channel.name) is not channel:
            # The channel was left while this sink was being opened: use the current one.
            channel = sink.channel = self._channel(channel.name, channel.room_id)
        channel.sinks.add(sink)
        socket.sinks.add(sink)
        await self._join(channel)
        self.changes.notify()
        # Joined before reading, so nothing committed from here on slips between the two.
        sink.refill()

    async def detach(self, sink: Sink | SignalSink) -> None:
        """Stop delivering to a sink (its stream completed, failed or its socket closed)."""
        from schema.signal_sinks import SignalSink

        if isinstance(sink, SignalSink):
            if sink.listening:
                sink.listening = False
                self.signal_sinks -= 1
                self.changes.notify()
                await self.signals.unlisten(sink)
            return
        channel, socket = sink.channel, sink.socket
        sink.close()
        if sink not in channel.sinks:
            return
        channel.sinks.discard(sink)
        socket.sinks.discard(sink)
        self.changes.notify()
        if not channel.sinks:
            await self._leave(channel)

    async def _join(self, channel: Channel) -> None:
        if channel.joined is None:
            channel.joined = asyncio.ensure_future(self._subscribe(channel))
        await asyncio.shield(channel.joined)

    async def _subscribe(self, channel: Channel) -> None:
        channel.subscription = await self.pubsub.join(
            channel.name, lambda item: self._on_event(channel, item)
        )

    async def _leave(self, channel: Channel) -> None:
        if self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
        joined = channel.joined
        if joined is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(joined)
        if channel.subscription is not None:
            await self.pubsub.leave(channel.subscription)

    # --- dispatching -----------------------------------------------------------------------

    def _on_event(self, channel: Channel, item: Any) -> None:
        # At once, in the pub/sub callback, unless earlier events still wait for an awaited
        # result (order first) or this one needs one.
        if self._backlog or not self._dispatch_now(channel, item):
            self._backlog += 1
            self._events.put_nowait((channel, item))

    async def _dispatch_forever(self) -> None:
        while True:
            channel, item = await self._events.get()
            try:
                await self._dispatch(channel, item)
            except Exception:  # a bug here must not stop delivery for everyone
                log.exception("delivery hub failed on an event of %s", channel.name)
            finally:
                self._backlog -= 1

    def _dispatch_now(self, channel: Channel, item: Any) -> bool:
        """Deliver an event without awaiting; False, with nothing written, when one of its
        results must be awaited (the dispatcher task then delivers it)."""
        try:
            if item is RESYNC:
                self._resync(channel)
                return True
            event = self._seen(channel, item)
            groups = self._groups(channel, event)
            if not groups:
                return True
            roots: dict[bool, Any] = {}
            ready = []
            for sinks in groups.values():
                payload = self._result_now(sinks[0], self._root(roots, sinks[0], event))
                if payload is None:
                    return False
                ready.append((payload, sinks))
            for payload, sinks in ready:
                self._emit(payload, sinks, event)
        except Exception:  # a bug here must not stop delivery for everyone
            log.exception("delivery hub failed on an event of %s", channel.name)
        return True

    async def _dispatch(self, channel: Channel, item: Any) -> None:
        if item is RESYNC:
            self._resync(channel)
            return
        event = self._seen(channel, item)
        groups = self._groups(channel, event)
        if not groups:
            return
        roots: dict[bool, Any] = {}
        for sinks in groups.values():
            root = self._root(roots, sinks[0], event)
            payload = await self.result(sinks[0], event, root)
            self._emit(payload, sinks, event)

    def _root(self, roots: dict[bool, Any], sink: Sink, event: EventView) -> Any:
        """The value a sink's root field resolves to (the message, or the log entry), made
        once per event for every sink that takes the same."""
        root = roots.get(sink.events)
        if root is None:
            root = roots[sink.events] = (
                self.to_event(event) if sink.events else self.to_message(event.message)
            )
        return root

    def _resync(self, channel: Channel) -> None:
        # Events may have been lost (broker reconnect, overflow): every sink re-reads.
        self.resync_refills += len(channel.sinks)
        for sink in list(channel.sinks):
            sink.refill()

    def _seen(self, channel: Channel, item: str) -> EventView:
        # One publish reaches the room's channel and each member's inbox channel with the same
        # payload (in-process, the same object): parse it once.
        if item is self._last_payload and self._last_event is not None:
            event = self._last_event
        else:
            event = EventView.from_json(item)
            self._last_payload, self._last_event = item, event
        if event.seq > channel.seen.get(event.room_id, 0):
            channel.seen[event.room_id] = event.seq
        return event

    def _emit(self, payload: bytes, sinks: list[Sink], event: EventView) -> None:
        delivered = 0
        for sink in sinks:
            # A socket may have fallen behind while the result was computed.
            if sink.live:
                sink.emit(payload, event)
                delivered += 1
        self.deliveries += delivered
        if delivered and self.observe_latency is not None:
            self.observe_latency(time.time() - event.created_at.timestamp())

    @staticmethod
    def _groups(channel: Channel, event: EventView) -> dict[Any, list[Sink]]:
        """The live sinks that take this event next as a result, grouped by what their result
        is; sinks it is not a result of only move past it."""
        groups: dict[Any, list[Sink]] = {}
        for sink in list(channel.sinks):
            if not sink.live:
                continue
            expected = sink.next_seq(event)
            if event.seq < expected:
                continue
            if event.seq > expected:
                # A gap: something was published that this sink did not see.
                sink.refill()
                continue
            if not sink.wants(event):
                sink.passed(event)
                continue
            group = groups.get(sink.key)
            if group is None:
                groups[sink.key] = [sink]
            else:
                group.append(sink)
        return groups

    async def result(self, sink: Sink, event: EventView, root: Any = None) -> bytes:
        """The encoded `payload` of a sink's result for one event."""
        if root is None:
            root = self._root({}, sink, event)
        payload = self._result_now(sink, root)
        if payload is not None:
            return payload
        result = self._execute(sink, root)
        if not isinstance(result, ExecutionResult):
            result = await result
        return self._encode(result)

    def _result_now(self, sink: Sink, root: Any) -> bytes | None:
        """The encoded payload, or None when it must be awaited."""
        direct = sink.shape.direct
        if direct is not None:
            key, plan = direct
            try:
                return orjson.dumps({"data": {key: plan(root)}})
            except PLAN_ERRORS:
                pass  # execute it, which reports what is wrong
        result = self._execute(sink, root)
        if isinstance(result, ExecutionResult):
            return self._encode(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()  # not awaited here: the caller executes it again where it can await
        return None

    def _execute(self, sink: Sink, root: Any) -> Any:
        operation = sink.operation
        return execute(
            self.schema,
            sink.shape.document,
            root_value=root,
            context_value=operation.context,
            variable_values=operation.variables,
            operation_name=operation.operation_name,
            executor_class=PlainExecutor,
        )

    @staticmethod
    def _encode(result: ExecutionResult) -> bytes:
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            format_errors(result.errors)
            payload["errors"] = [error.formatted for error in result.errors]
        return orjson.dumps(payload)
