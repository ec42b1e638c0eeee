"""The only module that touches broadcaster: channel fan-out hardened against its known defects.

broadcaster supplies the transports (memory, Redis). Its `Broadcast` front end is replaced here
because of four defects (see ARCHITECTURE.md):

* redis-py 8: the Redis listener started listening before the first channel was registered,
  returned at once and never ran again, so the first subscriber got nothing.
* Concurrent subscribes to an empty channel raced; one subscriber silently got nothing.
* A dropped broker connection killed the listener task and every subscriber hung forever.
* Each subscriber's queue was unbounded, so one slow client grew memory without limit.

Publishing has its own connection (RedisPublisher), apart from the listener's: while this
instance's listener reconnects, what it commits still reaches every other instance.

The cure for lost events is the same everywhere: a subscriber receives `RESYNC`, meaning "you
may have missed something; read what you missed from the database". PostgreSQL is the source of
truth, pub/sub only wakes subscribers up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlparse

from broadcaster._backends.base import BroadcastBackend
from broadcaster._backends.memory import MemoryBackend
from broadcaster._backends.redis import RedisBackend
from broadcaster._base import Event
from redis import asyncio as aioredis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from api.core.tasks import Changes

log = logging.getLogger(__name__)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC: Final = _Marker("RESYNC")
"""Delivered instead of events that may have been lost; the subscriber re-reads the database."""

_CLOSED: Final = _Marker("CLOSED")


# What is published: text, or an object whose str() is its text (encoded only if it leaves the
# process: api.chat.views.EventPayload).
Message = object

_MAX_PENDING_RETRIES = 10_000
_RETRY_FOR_SECONDS = 60.0


class _BrokerFailed(Exception):
    """The backend's listener stopped; the hub reconnects."""


class HardenedRedisBackend(RedisBackend):
    """broadcaster's Redis backend, with its listener fixed for redis-py 8 and failures surfaced."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # No silent retries inside redis-py: a reconnect it did on its own would drop the
        # messages published meanwhile without telling anyone. We reconnect and resync instead.
        # This connection only listens: publishing has its own (RedisPublisher).
        self._conn = aioredis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2,
            socket_keepalive=True,
            client_name=client_name("listener"),
        )
        self._pubsub = self._conn.pubsub()
        self._failure: asyncio.Queue[BaseException] | None = None

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        # Wake the listener only once the channel is registered: redis-py 8's listen() returns
        # immediately while nothing is subscribed (the first-subscriber bug).
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """Make the hub treat this connection as lost (it reconnects and resyncs)."""
        self._queue.put_nowait(error)  # type: ignore[arg-type]

    async def next_published(self) -> Event:
        item: Any = await self._queue.get()
        if isinstance(item, BaseException):
            raise _BrokerFailed(str(item)) from item
        event: Event = item
        return event

    async def _pubsub_listener(self) -> None:
        try:
            while True:
                await self._ready.wait()
                async for message in self._pubsub.listen():
                    if message["type"] == "message":
                        self._queue.put_nowait(
                            Event(
                                channel=message["channel"].decode(),
                                message=message["data"].decode(),
                            )
                        )
                # listen() returned: nothing is subscribed. Sleep until a subscribe wakes us,
                # unless one slipped in while listen() was returning.
                if not self._pubsub.subscribed:
                    self._ready.clear()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure is handed to the hub
            self._queue.put_nowait(error)  # type: ignore[arg-type]

    async def disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        for close in (self._pubsub.aclose, self._conn.aclose):
            try:
                await close()
            except Exception as error:  # noqa: BLE001 - closing a dead connection may fail
                log.debug("closing redis connection: %s", error)


class DirectMemoryBackend(MemoryBackend):
    """broadcaster's in-process backend, delivering each event by a loop callback instead of a
    queue read by a listener task: one task wake-up less per event, order kept (callbacks run
    first in, first out)."""

    deliver: Callable[[Event], None] | None = None

    async def publish(self, channel: str, message: Any) -> None:
        if self.deliver is not None:
            asyncio.get_running_loop().call_soon(self.deliver, Event(channel, message))
        else:
            await super().publish(channel, message)


def client_name(role: str) -> str:
    """How this process's connections show in Redis's CLIENT LIST."""
    return f"chat-backend:{os.getpid()}:{role}"


class RedisPublisher:
    """Publishing's own Redis connection, independent of the listener's.

    When the listener's connection drops, publishing goes on: a message committed through
    this instance still reaches the other instances while this one reconnects its listener.
    redis-py retries a command whose connection broke (on a fresh connection, with backoff);
    what still fails is retried in the background by PubSub.
    """

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
            socket_connect_timeout=2,
            socket_timeout=5,
            socket_keepalive=True,
            client_name=client_name("publisher"),
        )

    @property
    def pool(self) -> Any:
        """The connection pool of this client, which other Redis users of the app share."""
        return self._client.connection_pool

    async def publish(self, messages: list[tuple[str, str]]) -> None:
        """Publish in one round trip (a pipeline, not a transaction)."""
        if len(messages) == 1:
            await self._client.publish(*messages[0])
            return
        pipeline = self._client.pipeline(transaction=False)
        for channel, message in messages:
            pipeline.publish(channel, message)
        await pipeline.execute()

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as error:  # noqa: BLE001 - closing a dead connection may fail
            log.debug("closing the redis publisher: %s", error)


def create_backend(url: str) -> BroadcastBackend:
    """The broadcaster backend for a BROADCAST_URL (memory:// or redis://)."""
    scheme = urlparse(url).scheme
    if scheme in ("redis", "rediss"):
        return HardenedRedisBackend(url)
    if scheme == "memory":
        return DirectMemoryBackend(url)
    raise ValueError(f"Unsupported BROADCAST_URL scheme {scheme!r}: use memory:// or redis://")


Handler = Callable[[str | _Marker], None]


class Subscription:
    """One subscriber of a channel: a bounded queue of messages (str) and RESYNC markers, or,
    for a subscriber that handles events itself (the delivery hub), a handler called with each
    one as it arrives."""

    def __init__(self, channel: str, maxsize: int, handler: Handler | None = None) -> None:
        self.channel = channel
        # A subscriber with a handler never queues, so it has no queue (four deques, about
        # 3 KiB, for each session with sockets on this process).
        self._queue: asyncio.Queue[str | _Marker] | None = (
            asyncio.Queue() if handler is None else None
        )
        self._maxsize = maxsize
        self._handler = handler
        self.overflows = 0

    def deliver(self, message: str | _Marker) -> None:
        """Queue a message; a full queue is replaced by one RESYNC, so memory stays bounded."""
        if self._handler is not None:
            try:
                self._handler(message)
            except Exception:  # a handler's bug must not stop the channel's other subscribers
                log.exception("pub/sub handler for %s failed", self.channel)
            return
        assert self._queue is not None
        if self._queue.qsize() >= self._maxsize:
            self.overflows += 1
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(RESYNC)
        self._queue.put_nowait(message)

    def close(self) -> None:
        """End iteration after whatever is queued."""
        if self._queue is not None:
            self._queue.put_nowait(_CLOSED)

    def pending(self) -> int:
        """How many items wait in the queue."""
        return self._queue.qsize() if self._queue is not None else 0

    def __aiter__(self) -> AsyncIterator[str | _Marker]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | _Marker]:
        queue = self._queue
        if queue is None:
            raise TypeError("a subscription with a handler is not iterable")
        while True:
            item = await queue.get()
            if item is _CLOSED:
                return
            yield item


class _Channel:
    def __init__(self, subscribe: Coroutine[Any, Any, None]) -> None:
        self.subscribers: set[Subscription] = set()
        self.ready: asyncio.Task[None] = asyncio.ensure_future(subscribe)


class PubSub:
    """Channel fan-out over a broadcaster backend, with reconnection and bounded queues."""

    def __init__(self, url: str, *, queue_size: int = 256, reconnect_delay: float = 0.2) -> None:
        self.url = url
        self.queue_size = queue_size
        self.reconnect_delay = reconnect_delay
        self.reconnects = 0
        self.publish_retries = 0
        self._backend: BroadcastBackend | None = None
        self._channels: dict[str, _Channel] = {}
        # Serialises SUBSCRIBE/UNSUBSCRIBE so they reach the broker in the order they were decided.
        self._command_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        # Signalled whenever a subscription starts or ends.
        self.changes = Changes()
        self._retries: set[asyncio.Task[None]] = set()
        # On Redis, publishing has its own connection; in memory it goes through the backend.
        self._publisher: RedisPublisher | None = None

    @property
    def channel_count(self) -> int:
        """How many channels have at least one local subscriber."""
        return len(self._channels)

    @property
    def subscriber_count(self) -> int:
        """How many local subscriptions are open."""
        return sum(len(state.subscribers) for state in self._channels.values())

    def subscribers(self, channel: str) -> int:
        """How many local subscriptions a channel has (ready ones only)."""
        state = self._channels.get(channel)
        if state is None or not state.ready.done():
            return 0
        return len(state.subscribers)

    def subscriptions(self, channel: str) -> list[Subscription]:
        """The local subscriptions of a channel (for metrics and tests)."""
        state = self._channels.get(channel)
        return list(state.subscribers) if state else []

    async def wait_for_subscribers(self, channel: str, count: int = 1) -> None:
        """Wait until a channel has at least `count` ready local subscriptions."""
        while self.subscribers(channel) < count:
            await self.changed()

    async def changed(self) -> None:
        """Wait until a subscription starts or ends."""
        await self.changes.wait()

    def _create_backend(self) -> BroadcastBackend:
        backend = create_backend(self.url)
        if isinstance(backend, DirectMemoryBackend):
            backend.deliver = self._dispatch
        return backend

    @property
    def redis_pool(self) -> Any:
        """The Redis connection pool other parts of the app share (the rate limiter's counters),
        so this module owns every Redis connection; None without Redis."""
        return self._publisher.pool if self._publisher is not None else None

    async def connect(self) -> None:
        """Connect to the broker and start the listener (and its watchdog)."""
        self._backend = self._create_backend()
        if isinstance(self._backend, HardenedRedisBackend):
            self._publisher = RedisPublisher(self.url)
        try:
            await self._backend.connect()
            self._connected.set()
        except Exception as error:  # noqa: BLE001 - start anyway; the watchdog keeps trying
            log.warning("pub/sub broker unavailable at start (%s); will keep retrying", error)
        self._listener = asyncio.create_task(self._listen(), name="pubsub-listener")

    async def disconnect(self) -> None:
        """Stop listening, end every subscription and close the broker connection."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for retry in self._retries:
            retry.cancel()
        for state in self._channels.values():
            for subscription in state.subscribers:
                subscription.close()
        if self._backend is not None:
            await self._backend.disconnect()
        if self._publisher is not None:
            await self._publisher.close()

    async def publish(self, channel: str, message: Message) -> bool:
        """Publish; False when it failed (it is then retried in the background)."""
        return await self.publish_many([(channel, message)])

    async def publish_many(self, messages: Sequence[tuple[str, Message]]) -> bool:
        """Publish several messages, in one broker round trip where the broker allows it;
        False when that failed (each is then retried in the background).

        A message is text, or an object whose str() is its text: in-process subscribers get
        the object itself, and only a broker's message is encoded (api.chat.views.EventPayload).

        Publishing does not wait for the listener: its connection may be down and
        reconnecting while the broker itself is fine for everyone else.
        """
        try:
            await self._send(messages)
        except Exception as error:  # noqa: BLE001 - retried below; RESYNC covers the rest
            log.warning("publish failed (%s); retrying in the background", error)
            for channel, message in messages:
                self._retry_later(channel, message)
            return False
        return True

    async def _send(self, messages: Sequence[tuple[str, Message]]) -> None:
        if self._publisher is not None:
            await self._publisher.publish([(channel, str(text)) for channel, text in messages])
            return
        backend = self._backend
        if backend is None:
            raise ConnectionError("pub/sub is not connected")
        if isinstance(backend, MemoryBackend):
            channels = self._channels
            for channel, message in messages:
                # In-process, a channel nobody here listens to has no one to reach (a send
                # publishes to every member's inbox channel, whether or not they are online).
                if channel in channels:
                    await backend.publish(channel, message)
            return
        for channel, message in messages:
            await backend.publish(channel, str(message))

    def _retry_later(self, channel: str, message: Message) -> None:
        # Other instances' listeners may be healthy and never resync: without a retry their
        # subscribers would only learn of this message when a later one shows the gap.
        if len(self._retries) >= _MAX_PENDING_RETRIES:
            log.warning("too many publishes awaiting retry; dropping one for %s", channel)
            return
        self.publish_retries += 1
        task = asyncio.create_task(self._retry(channel, message))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, channel: str, message: Message) -> None:
        delay = self.reconnect_delay
        deadline = asyncio.get_running_loop().time() + _RETRY_FOR_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            # Jittered, so the retries of many sends do not arrive at the broker together.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - not crypto
            delay = min(delay * 2, 5.0)
            try:
                await self._send([(channel, message)])
            except Exception as error:  # noqa: BLE001 - try again until the deadline
                log.debug("publish retry to %s failed: %s", channel, error)
                continue
            return
        log.warning("gave up publishing to %s; subscribers will find it in the database", channel)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        """Subscribe to a channel; the broker subscription is in place when this returns."""
        subscription = Subscription(channel, self.queue_size)
        try:
            await self._join(subscription)
            yield subscription
        finally:
            await self.leave(subscription)

    async def join(self, channel: str, handler: Handler) -> Subscription:
        """Call `handler` with every message (and RESYNC) of a channel until `leave`; the
        broker subscription is in place when this returns."""
        subscription = Subscription(channel, self.queue_size, handler)
        try:
            await self._join(subscription)
        except BaseException:
            await self.leave(subscription)
            raise
        return subscription

    async def leave(self, subscription: Subscription) -> None:
        """End a subscription (the broker's ends with the channel's last local subscriber)."""
        await self._leave(subscription.channel, subscription)

    async def _join(self, subscription: Subscription) -> None:
        channel = subscription.channel
        state = self._channels.get(channel)
        if state is None:
            # Registered before the first await, so a concurrent subscriber joins this state
            # instead of racing to create its own (encode/broadcaster#142). The broker
            # subscription belongs to the channel, not to its first subscriber: if that one
            # is cancelled meanwhile, the others still get it.
            state = self._channels[channel] = _Channel(self._broker_subscribe(channel))
        state.subscribers.add(subscription)
        await asyncio.shield(state.ready)
        self.changes.notify()

    async def _broker_subscribe(self, channel: str) -> None:
        try:
            async with self._command_lock:
                if self._backend is not None and self._connected.is_set():
                    await self._backend.subscribe(channel)
        except Exception as error:  # noqa: BLE001 - recovered by a reconnect and RESYNC
            log.warning("subscribe to %s failed (%s); reconnecting", channel, error)
            if isinstance(self._backend, HardenedRedisBackend):
                self._backend.fail(error)

    async def _leave(self, channel: str, subscription: Subscription) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        state.subscribers.discard(subscription)
        self.changes.notify()
        if state.subscribers:
            return
        # Unsubscribe only after the subscribe went out, so the broker sees them in order.
        with contextlib.suppress(Exception):
            await asyncio.shield(state.ready)
        if state.subscribers or self._channels.get(channel) is not state:
            return
        del self._channels[channel]
        try:
            async with self._command_lock:
                if self._backend is not None and self._connected.is_set():
                    await self._backend.unsubscribe(channel)
        except Exception as error:  # noqa: BLE001 - a dead broker forgets subscriptions anyway
            log.debug("unsubscribe from %s failed: %s", channel, error)

    def _dispatch(self, event: Event) -> None:
        state = self._channels.get(event.channel)
        if state is None:
            return
        for subscription in state.subscribers:
            subscription.deliver(event.message)

    def _resync_all(self) -> None:
        for state in self._channels.values():
            for subscription in state.subscribers:
                subscription.deliver(RESYNC)

    async def _listen(self) -> None:
        while True:
            backend = self._backend
            assert backend is not None
            if self._connected.is_set():
                try:
                    while True:
                        self._dispatch(await backend.next_published())
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - the watchdog: reconnect, then resync
                    log.warning("pub/sub broker connection lost (%s); reconnecting", error)
            await self._reconnect(backend)

    async def _reconnect(self, failed: BroadcastBackend) -> None:
        self._connected.clear()
        await failed.disconnect()
        delay = self.reconnect_delay
        while True:
            backend = self._create_backend()
            try:
                await backend.connect()
                async with self._command_lock:
                    for channel in list(self._channels):
                        await backend.subscribe(channel)
                    if isinstance(backend, HardenedRedisBackend):
                        # Proves the connection works even when no channel is subscribed.
                        await backend._conn.ping()
            except Exception as error:  # noqa: BLE001 - keep trying until the broker is back
                log.info("pub/sub broker still unavailable (%s); retrying in %.1fs", error, delay)
                await backend.disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._backend = backend
            self._connected.set()
            self.reconnects += 1
            log.warning("pub/sub broker connection restored; subscribers resync")
            # Anything published while we were away is gone from the broker: refill from the DB.
            self._resync_all()
            return


class PresenceRegistry:
    """Which users each instance has sockets for, in Redis, so that every instance can tell who
    is online anywhere and a crashed instance's users lapse (its keys expire) within `ttl`.

    Without Redis (memory://) there is one process: nothing is stored and no instance but this
    one exists.
    """

    PREFIX = "presence:"

    def __init__(self, pubsub: PubSub, *, instance: str, ttl: float) -> None:
        self.instance = instance
        self.ttl = ttl
        self._pool = pubsub.redis_pool
        self._client = aioredis.Redis(connection_pool=self._pool) if self._pool else None

    @property
    def shared(self) -> bool:
        """Whether other instances share this registry (Redis)."""
        return self._client is not None

    def _users_key(self, instance: str) -> str:
        return f"{self.PREFIX}users:{instance}"

    def _alive_key(self, instance: str) -> str:
        return f"{self.PREFIX}alive:{instance}"

    async def add(self, user_id: str, user: str) -> None:
        """This instance has a socket of the user (`user`: what others need to show them)."""
        if self._client is None:
            return
        pipeline = self._client.pipeline(transaction=False)
        pipeline.hset(self._users_key(self.instance), user_id, user)
        pipeline.pexpire(self._users_key(self.instance), int(self.ttl * 1000))
        await pipeline.execute()

    async def remove(self, user_id: str) -> None:
        """This instance has no socket of the user any more."""
        if self._client is None:
            return
        await self._client.hdel(self._users_key(self.instance), user_id)

    async def beat(self) -> None:
        """This instance is alive: keep its keys for another `ttl`."""
        if self._client is None:
            return
        ms = int(self.ttl * 1000)
        pipeline = self._client.pipeline(transaction=False)
        pipeline.set(self._alive_key(self.instance), "1", px=ms)
        pipeline.pexpire(self._users_key(self.instance), ms)
        await pipeline.execute()

    async def instances(self) -> dict[str, dict[str, str]]:
        """Every live instance (this one included) and the users it has sockets for."""
        if self._client is None:
            return {}
        alive = [
            _text(key).removeprefix(self.PREFIX + "alive:")
            async for key in self._client.scan_iter(match=self.PREFIX + "alive:*", count=500)
        ]
        found: dict[str, dict[str, str]] = {}
        for instance in alive:
            users = await self._client.hgetall(self._users_key(instance))
            found[instance] = {_text(k): _text(v) for k, v in users.items()}
        return found

    async def forget(self) -> None:
        """This instance is stopping: its users are no longer here."""
        if self._client is None:
            return
        await self._client.delete(self._users_key(self.instance), self._alive_key(self.instance))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
