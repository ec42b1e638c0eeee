"""The pub/sub hub against a real Redis: each broadcaster defect, reproduced and handled."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
from broadcaster import Broadcast

from api.core.pubsub import RESYNC, PubSub, Subscription

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="needs redis-server on PATH"
)

from tests.support import RedisServer  # noqa: E402


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    """A private Redis that the test may stop and start again."""
    server = RedisServer()
    await server.start()
    yield server
    await server.stop(kill=True)


@pytest.fixture
async def hub(redis: RedisServer) -> AsyncIterator[PubSub]:
    pubsub = PubSub(redis.url, queue_size=16, reconnect_delay=0.05)
    await pubsub.connect()
    yield pubsub
    await pubsub.disconnect()


async def next_item(subscription: Subscription, timeout: float = 5) -> object:
    return await asyncio.wait_for(anext(aiter(subscription)), timeout)


async def test_upstream_broadcaster_misses_the_first_subscribers_messages_on_redis_py_8(
    redis: RedisServer,
) -> None:
    """The defect we work around: if this starts failing, upstream fixed it."""
    broadcast = Broadcast(redis.url)
    await broadcast.connect()
    try:
        async with broadcast.subscribe("first") as subscriber:
            await broadcast.publish("first", "hello")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(subscriber.get(), 1)
    finally:
        await broadcast.disconnect()


async def test_first_subscriber_receives_messages(hub: PubSub) -> None:
    async with hub.subscribe("first") as subscription:
        await hub.publish("first", "hello")
        assert await next_item(subscription) == "hello"


async def test_subscribers_who_leave_and_return_still_receive(hub: PubSub) -> None:
    for round_ in range(3):
        async with hub.subscribe("again") as subscription:
            await hub.publish("again", f"round {round_}")
            assert await next_item(subscription) == f"round {round_}"
        assert hub.channel_count == 0


async def test_concurrent_subscribers_to_an_empty_channel_all_receive_and_leave_cleanly(
    hub: PubSub,
) -> None:
    count = 25
    ready = [asyncio.Event() for _ in range(count)]
    release = asyncio.Event()

    async def member(index: int) -> object:
        async with hub.subscribe("crowd") as subscription:
            ready[index].set()
            item = await next_item(subscription)
            await release.wait()
            return item

    members = [asyncio.create_task(member(i)) for i in range(count)]
    await asyncio.gather(*(event.wait() for event in ready))
    assert hub.subscribers("crowd") == count
    await hub.publish("crowd", "everyone")
    release.set()
    # Leaving all at once raised KeyError upstream (encode/broadcaster#142).
    assert await asyncio.gather(*members) == ["everyone"] * count
    assert hub.channel_count == 0


async def test_subscribers_resync_after_the_broker_restarts_and_then_receive_again(
    redis: RedisServer, hub: PubSub
) -> None:
    async with hub.subscribe("outage") as subscription:
        await hub.publish("outage", "before")
        assert await next_item(subscription) == "before"
        await redis.stop(kill=True)
        assert await hub.publish("outage", "lost while down") is False
        await redis.start()
        # The watchdog reconnects, resubscribes and tells the subscriber to refill.
        assert await next_item(subscription, timeout=15) is RESYNC
        assert await hub.publish("outage", "after") is True
        # The failed publish is retried in the background: it may arrive too, before or after.
        received = [await next_item(subscription)]
        while "after" not in received:
            received.append(await next_item(subscription))
        assert set(received) <= {"lost while down", "after"}, received
    assert hub.reconnects == 1


async def test_a_subscriber_that_joins_while_the_broker_is_down_receives_after_it_returns(
    redis: RedisServer, hub: PubSub
) -> None:
    await redis.stop(kill=True)
    async with hub.subscribe("late") as subscription:
        await redis.start()
        assert await next_item(subscription, timeout=15) is RESYNC
        await hub.publish("late", "welcome")
        assert await next_item(subscription) == "welcome"


async def test_a_slow_subscribers_queue_stays_bounded_and_ends_in_resync(hub: PubSub) -> None:
    async with hub.subscribe("fast") as slow, hub.subscribe("fast") as quick:
        for i in range(200):
            await hub.publish("fast", str(i))
            assert await next_item(quick) == str(i)
        assert slow.pending() <= hub.queue_size + 1
        assert slow.overflows > 0
        # What was dropped is replaced by one RESYNC, followed by the newest messages in order.
        assert await next_item(slow) is RESYNC
        rest = [await next_item(slow) for _ in range(slow.pending())]
        assert rest == [str(i) for i in range(200 - len(rest), 200)]
