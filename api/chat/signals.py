"""Ephemeral room state: typing, presence and read positions, live beside the log.

Nothing here is written to the database or replayed. Every instance hears every signal on one
pub/sub channel and keeps the little state there is (who types where, who is online on which
instance) in memory, so a new `roomSignals` subscriber gets the current state first, then the
changes. Each subscriber has its own small queue: when it is full the oldest signal goes, so a
slow subscriber never holds up anything, least of all message delivery.

Presence: a user is online while they have an authenticated WebSocket on any instance. Each
instance announces its first socket of a user and (debounced) its last; with Redis it also
keeps its users in the presence registry under a TTL, so another instance's users are known
at start and a crashed instance's users go offline once its keys lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from api.chat import store
from api.chat.constants import room_channel
from api.chat.views import JOINED, LEFT, EventPayload, EventView
from api.core.db import Database
from api.core.errors import Forbidden, NotFound
from api.core.pubsub import RESYNC, PresenceRegistry, PubSub, Subscription
from api.users.views import UserView

log = logging.getLogger(__name__)

CHANNEL = "signals"
# A typing state lapses this long after the last setTyping(true).
TYPING_TTL = 6.0
# At most one outgoing signal per user per room in this window.
SIGNAL_INTERVAL = 1.0
# A user whose last socket closed is announced offline only if none opens within this.
PRESENCE_DEBOUNCE = 2.0
# Signals a subscriber may have waiting; beyond it the oldest are dropped.
LISTENER_QUEUE = 64

TYPING, PRESENCE, READ = "typing", "presence", "read"


@dataclass(frozen=True, slots=True)
class SignalView:
    """One signal of one room: a member typing or not, online or not, or their read position."""

    kind: str
    room_id: uuid.UUID
    user: UserView
    on: bool = False
    seq: int = 0


def _user_raw(user: UserView) -> list[str]:
    return [str(user.id), user.name, user.created_at.isoformat()]


def _user(raw: list[str]) -> UserView:
    user_id, name, created = raw
    return UserView(id=uuid.UUID(user_id), name=name, created_at=datetime.fromisoformat(created))


class SignalListener(Protocol):
    """Whatever takes a room's signals for one subscriber (a queue, or a socket writer)."""

    room_id: uuid.UUID
    user_id: uuid.UUID

    def put(self, signal: SignalView) -> None: ...

    def end(self, error: BaseException | None = None) -> None: ...


class Listener:
    """One roomSignals subscription: a bounded queue of signals, oldest dropped first."""

    def __init__(self, room_id: uuid.UUID, user_id: uuid.UUID, size: int = LISTENER_QUEUE) -> None:
        self.room_id = room_id
        self.user_id = user_id
        self.size = size
        self.dropped = 0
        self._queue: deque[SignalView] = deque()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._ended = False

    def put(self, signal: SignalView) -> None:
        if self._ended:
            return
        if len(self._queue) >= self.size:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(signal)
        self._ready.set()

    def end(self, error: BaseException | None = None) -> None:
        """No more signals; the stream ends (with `error`, if any) once the queue is read."""
        self._ended = True
        self._error = error
        self._ready.set()

    async def get(self) -> SignalView | None:
        """The next signal; None when the stream ended (raises its error, if it has one)."""
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class Signals:
    """The signal state of one process (built by the app's lifespan)."""

    def __init__(
        self,
        *,
        db: Database,
        pubsub: PubSub,
        presence_ttl: float = 20.0,
        instance: str | None = None,
    ) -> None:
        self.db = db
        self.pubsub = pubsub
        self.instance = instance or uuid.uuid4().hex
        self.registry = PresenceRegistry(pubsub, instance=self.instance, ttl=presence_ttl)
        self.presence_ttl = presence_ttl
        # Sockets of each user on this instance.
        self._local: dict[uuid.UUID, int] = {}
        self._going_offline: dict[uuid.UUID, asyncio.TimerHandle] = {}
        # Every instance each online user has a socket on, and how to show them.
        self._online: dict[uuid.UUID, set[str]] = {}
        self._people: dict[uuid.UUID, UserView] = {}
        # (room, user) -> when their typing state lapses, and its timer.
        self._typing: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, asyncio.TimerHandle]] = {}
        self._typing_users: dict[tuple[uuid.UUID, uuid.UUID], UserView] = {}
        # What this instance last sent per (room, user), and a delayed stop, if any.
        self._sent: dict[tuple[uuid.UUID, uuid.UUID], float] = {}
        self._delayed: dict[tuple[uuid.UUID, uuid.UUID], asyncio.TimerHandle] = {}
        # Subscribers per room, each room's members, and its log channel (membership changes).
        self._listeners: dict[uuid.UUID, set[SignalListener]] = {}
        self._members: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._room_subscriptions: dict[uuid.UUID, Subscription] = {}
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beating: asyncio.Task[None] | None = None
        self.delivered = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Hear every signal; with Redis, learn who is online elsewhere and keep beating."""
        self._subscription = await self.pubsub.join(CHANNEL, self._on_message)
        if self.registry.shared:
            await self._beat_once()
            self._beating = asyncio.create_task(self._beat_forever(), name="presence-beat")

    async def stop(self) -> None:
        """Stop: end every subscriber; this instance's users are no longer here."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        for handle in [*self._going_offline.values(), *self._delayed.values()]:
            handle.cancel()
        for _, handle in self._typing.values():
            handle.cancel()
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.end()
        with contextlib.suppress(Exception):
            await self.registry.forget()
        for task in list(self._tasks):
            task.cancel()
        if self._subscription is not None:
            await self.pubsub.leave(self._subscription)
        for subscription in self._room_subscriptions.values():
            await self.pubsub.leave(subscription)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("a signal could not be sent: %s", task.exception())

    async def _publish(self, message: dict[str, Any]) -> None:
        await self.pubsub.publish(CHANNEL, orjson.dumps(message).decode())

    # --- presence ---------------------------------------------------------------------------

    def connected(self, user: UserView) -> None:
        """An authenticated socket of the user opened on this instance."""
        count = self._local.get(user.id, 0) + 1
        self._local[user.id] = count
        if count > 1:
            return
        pending = self._going_offline.pop(user.id, None)
        if pending is not None:
            pending.cancel()  # back within the debounce: nobody saw them go
            return
        self._people[user.id] = user
        self._set_online(user, self.instance, True)
        self._spawn(self._announce(user, True))

    def disconnected(self, user_id: uuid.UUID) -> None:
        """An authenticated socket of the user closed on this instance."""
        count = self._local.get(user_id, 0) - 1
        if count > 0:
            self._local[user_id] = count
            return
        self._local.pop(user_id, None)
        if user_id in self._going_offline:
            return
        self._going_offline[user_id] = asyncio.get_running_loop().call_later(
            PRESENCE_DEBOUNCE, self._gone, user_id
        )

    def _gone(self, user_id: uuid.UUID) -> None:
        self._going_offline.pop(user_id, None)
        if self._local.get(user_id):
            return
        user = self._people.get(user_id)
        if user is None:
            return
        self._set_online(user, self.instance, False)
        self._spawn(self._announce(user, False))

    async def _announce(self, user: UserView, online: bool) -> None:
        if online:
            await self.registry.add(str(user.id), orjson.dumps(_user_raw(user)).decode())
        else:
            await self.registry.remove(str(user.id))
        await self._publish({"t": "p", "u": _user_raw(user), "i": self.instance, "on": online})

    def is_online(self, user_id: uuid.UUID) -> bool:
        return bool(self._online.get(user_id))

    def _set_online(self, user: UserView, instance: str, online: bool) -> None:
        instances = self._online.get(user.id)
        was = bool(instances)
        if online:
            self._people[user.id] = user
            self._online.setdefault(user.id, set()).add(instance)
        elif instances is not None:
            instances.discard(instance)
            if not instances:
                del self._online[user.id]
        now = bool(self._online.get(user.id))
        if now != was:
            signal_rooms = [room for room, members in self._members.items() if user.id in members]
            for room_id in signal_rooms:
                self._emit(SignalView(PRESENCE, room_id, user, on=now))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.presence_ttl / 4)
            try:
                await self._beat_once()
            except Exception as error:  # noqa: BLE001 - Redis down: try again next beat
                log.warning("presence heartbeat failed: %s", error)

    async def _beat_once(self) -> None:
        """Keep this instance's keys alive, and reconcile with the registry: users of instances
        that are gone (crashed: their keys lapsed) go offline; users of instances this one has
        not heard from yet come online."""
        await self.registry.beat()
        live = await self.registry.instances()
        live.pop(self.instance, None)
        for user_id, instances in list(self._online.items()):
            for instance in list(instances):
                if instance != self.instance and instance not in live:
                    self._set_online(self._people[user_id], instance, False)
        for instance, users in live.items():
            for raw in users.values():
                user = _user(orjson.loads(raw))
                if instance not in self._online.get(user.id, ()):
                    self._set_online(user, instance, True)

    # --- typing -----------------------------------------------------------------------------

    async def set_typing(self, *, user: UserView, room_id: uuid.UUID, typing: bool) -> None:
        """Start or renew (true) or end (false) the user's typing state in a room; at most one
        outgoing signal per second, renewals inside that window only extend the state."""
        key = (room_id, user.id)
        now = time.monotonic()
        last = self._sent.get(key)
        delayed = self._delayed.pop(key, None)
        if delayed is not None:
            delayed.cancel()
        if typing:
            if key in self._typing and last is not None and now - last < SIGNAL_INTERVAL:
                self._arm_lapse(key, user, now + TYPING_TTL)
                return
            self._sent[key] = now
            await self._publish({"t": "t", "r": str(room_id), "u": _user_raw(user), "on": True})
            return
        if key not in self._typing:
            return
        if last is not None and now - last < SIGNAL_INTERVAL:
            # Stopping right after starting: the stop goes out when the window closes.
            self._delayed[key] = asyncio.get_running_loop().call_later(
                last + SIGNAL_INTERVAL - now, self._send_stop, room_id, user
            )
            return
        self._sent[key] = now
        await self._publish({"t": "t", "r": str(room_id), "u": _user_raw(user), "on": False})

    def message_posted(self, *, room_id: uuid.UUID, user: UserView) -> None:
        """The user sent a message to the room: a typing state of theirs there ends now (the
        room shows their message, not that they are still typing)."""
        key = (room_id, user.id)
        if key not in self._typing:
            return
        # At once, not at the end of the one-signal-a-second window: the stop goes with the
        # message, and a client that cleared the line when the message came must see the next
        # start as news.
        delayed = self._delayed.pop(key, None)
        if delayed is not None:
            delayed.cancel()
        self._sent[key] = time.monotonic()
        self._spawn(self._publish({"t": "t", "r": str(room_id), "u": _user_raw(user), "on": False}))

    def _send_stop(self, room_id: uuid.UUID, user: UserView) -> None:
        self._delayed.pop((room_id, user.id), None)
        self._sent[(room_id, user.id)] = time.monotonic()
        self._spawn(self._publish({"t": "t", "r": str(room_id), "u": _user_raw(user), "on": False}))

    def _typing_changed(self, room_id: uuid.UUID, user: UserView, on: bool) -> None:
        key = (room_id, user.id)
        if on:
            started = key not in self._typing
            self._arm_lapse(key, user, time.monotonic() + TYPING_TTL)
            if started:
                self._emit(SignalView(TYPING, room_id, user, on=True))
            return
        entry = self._typing.pop(key, None)
        self._typing_users.pop(key, None)
        if entry is not None:
            entry[1].cancel()
            self._emit(SignalView(TYPING, room_id, user, on=False))

    def _arm_lapse(self, key: tuple[uuid.UUID, uuid.UUID], user: UserView, until: float) -> None:
        entry = self._typing.get(key)
        if entry is not None:
            if entry[0] >= until:
                return
            entry[1].cancel()
        loop = asyncio.get_running_loop()
        handle = loop.call_later(until - time.monotonic(), self._lapse, key)
        self._typing[key] = (until, handle)
        self._typing_users[key] = user

    def _lapse(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        user = self._typing_users.get(key)
        if user is not None:
            self._typing_changed(key[0], user, False)

    # --- read positions ----------------------------------------------------------------------

    async def read_moved(self, *, room_id: uuid.UUID, user: UserView, seq: int) -> None:
        """Tell the room (the user's other devices included) a read position moved."""
        await self._publish({"t": "r", "r": str(room_id), "u": _user_raw(user), "s": seq})

    # --- incoming ---------------------------------------------------------------------------

    def _on_message(self, item: Any) -> None:
        if item is RESYNC:
            # Signals are best effort; presence is reconciled at the next beat.
            return
        try:
            message = orjson.loads(str(item))
            kind, user = message["t"], _user(message["u"])
            if kind == "p":
                self._set_online(user, message["i"], bool(message["on"]))
            elif kind == "t":
                self._typing_changed(uuid.UUID(message["r"]), user, bool(message["on"]))
            elif kind == "r":
                room_id = uuid.UUID(message["r"])
                self._emit(SignalView(READ, room_id, user, seq=int(message["s"])))
        except Exception:  # a malformed signal must not stop the others
            log.exception("could not handle a signal")

    def _emit(self, signal: SignalView) -> None:
        for listener in self._listeners.get(signal.room_id, ()):
            listener.put(signal)
            self.delivered += 1

    # --- listening --------------------------------------------------------------------------

    async def listen(
        self,
        *,
        room_id: uuid.UUID,
        user_id: uuid.UUID,
        member_ids: Iterable[uuid.UUID],
        listener: SignalListener | None = None,
    ) -> SignalListener:
        """A subscriber of a room's signals (a queue unless one is given), the room's current
        state put first."""
        if listener is None:
            listener = Listener(room_id, user_id)
        members = set(member_ids)
        if room_id not in self._listeners:
            self._listeners[room_id] = set()
            self._members[room_id] = members
            subscription = await self.pubsub.join(
                room_channel(room_id), lambda item: self._on_room_entry(room_id, item)
            )
            if room_id in self._listeners:
                self._room_subscriptions[room_id] = subscription
            else:
                await self.pubsub.leave(subscription)
        self._listeners.setdefault(room_id, set()).add(listener)
        current = self._members.setdefault(room_id, members)
        for member_id in current:
            person = self._people.get(member_id)
            if person is not None and self.is_online(member_id):
                listener.put(SignalView(PRESENCE, room_id, person, on=True))
        for (typing_room, _), user in list(self._typing_users.items()):
            if typing_room == room_id:
                listener.put(SignalView(TYPING, room_id, user, on=True))
        return listener

    async def unlisten(self, listener: SignalListener) -> None:
        """The subscriber went away."""
        listener.end()
        listeners = self._listeners.get(listener.room_id)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[listener.room_id]
            self._members.pop(listener.room_id, None)
            subscription = self._room_subscriptions.pop(listener.room_id, None)
            if subscription is not None:
                await self.pubsub.leave(subscription)

    @property
    def listener_count(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())

    def _on_room_entry(self, room_id: uuid.UUID, item: Any) -> None:
        # Only membership changes matter here; most entries are messages, and a substring test
        # spares parsing them.
        members = self._members.get(room_id)
        if members is None:
            return
        if item is RESYNC:
            self._spawn(self._reload_members(room_id))
            return
        if isinstance(item, EventPayload):
            event = item.event  # in-process: the view itself
        elif '"kind":"joined"' in item or '"kind":"left"' in item:
            event = EventView.from_json(item)
        else:
            return
        if event.kind not in (JOINED, LEFT) or event.member is None:
            return
        member_id = event.member.id
        if event.kind == JOINED:
            members.add(member_id)
            return
        members.discard(member_id)
        self._forbid(room_id, member_id)

    def _forbid(self, room_id: uuid.UUID, user_id: uuid.UUID) -> None:
        for listener in list(self._listeners.get(room_id, ())):
            if listener.user_id == user_id:
                listener.end(Forbidden("You are no longer a member of this room."))

    async def _reload_members(self, room_id: uuid.UUID) -> None:
        row = await store.room(self.db, room_id=room_id)
        members = set(row.member_ids) if row is not None else set()
        if room_id in self._members:
            self._members[room_id] = members
            for listener in list(self._listeners.get(room_id, ())):
                if listener.user_id not in members:
                    listener.end(Forbidden("You are no longer a member of this room."))


async def room_members_for(
    db: Database, *, user_id: uuid.UUID, room_id: uuid.UUID
) -> list[uuid.UUID]:
    """The room's members; NOT_FOUND without the room, FORBIDDEN unless the user is one."""
    row = await store.room(db, room_id=room_id)
    if row is None:
        raise NotFound("No such room.")
    if user_id not in row.member_ids:
        raise Forbidden()
    return row.member_ids


async def set_typing(
    *, db: Database, signals: Signals, user: UserView, room_id: uuid.UUID, typing: bool
) -> bool:
    """The caller is typing in a room (lapses after 6 s unless repeated), or stopped."""
    where = await store.position(db, room_id=room_id, user_id=user.id)
    if where is None:
        raise NotFound("No such room.")
    if not where.is_member:
        raise Forbidden()
    await signals.set_typing(user=user, room_id=room_id, typing=typing)
    return True


async def follow_room_signals(
    *, db: Database, signals: Signals, user: UserView, room_id: uuid.UUID
) -> Listener:
    """A subscriber of a room's signals (members only), current state first."""
    members = await room_members_for(db, user_id=user.id, room_id=room_id)
    listener = Listener(room_id, user.id)
    await signals.listen(room_id=room_id, user_id=user.id, member_ids=members, listener=listener)
    return listener
