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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from graphql import (
    ExecutionResult,
    GraphQLSchema,
    execute,
)

from api.chat import service as chat
from api.chat import signals as signals_service
from api.chat.constants import room_channel, user_channel
from api.chat.views import EventView, decode_message_cursor
from api.core.db import Database
from api.core.errors import BadUserInput
from api.core.pubsub import RESYNC, PubSub
from api.core.tasks import Changes
from api.users.cache import UserDirectory
from schema.documents import Documents
from schema.errors import format_errors
from schema.execution import PLAN_ERRORS, PlainExecutor, Plans
from schema.shapes import Shape, Shapes
from schema.sinks import Channel, Ended, InboxSink, Operation, RoomSink, Sink

if TYPE_CHECKING:
    from schema.signal_sinks import SignalSink

log = logging.getLogger(__name__)

# The root field each kind of sink serves: (sink class, every log entry or only messages).
SUBSCRIPTION_FIELDS = {
    ("RoomSink", False): "messageAdded",
    ("RoomSink", True): "roomEvents",
    ("InboxSink", False): "inbox",
    ("InboxSink", True): "inboxEvents",
}


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
