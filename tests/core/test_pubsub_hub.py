"""The pub/sub hub's bookkeeping, on the in-memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from api.core.pubsub import PubSub


@pytest.fixture
async def hub() -> AsyncIterator[PubSub]:
    pubsub = PubSub("memory://")
    await pubsub.connect()
    yield pubsub
    await pubsub.disconnect()


async def test_a_cancelled_first_subscriber_does_not_leave_later_ones_deaf(hub: PubSub) -> None:
    # Hold broker commands, as a busy hub would, so the first subscriber is still waiting for
    # its SUBSCRIBE when a second one joins and the first is cancelled (a client went away).
    await hub._command_lock.acquire()
    first_entered = asyncio.Event()
    second_got: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def first() -> None:
        first_entered.set()
        async with hub.subscribe("room"):
            await asyncio.Event().wait()

    async def second() -> None:
        async with hub.subscribe("room") as subscription:
            second_got.set_result(await anext(aiter(subscription)))

    first_task = asyncio.create_task(first())
    await first_entered.wait()
    second_task = asyncio.create_task(second())
    await asyncio.sleep(0)  # let the second join the channel
    first_task.cancel()
    hub._command_lock.release()
    await hub.wait_for_subscribers("room", 1)
    await hub.publish("room", "still delivered")
    assert await asyncio.wait_for(second_got, 5) == "still delivered"
    await second_task
    assert hub.channel_count == 0


async def test_a_publish_that_fails_is_retried_until_the_broker_takes_it() -> None:
    hub = PubSub("memory://", reconnect_delay=0.01)
    await hub.connect()
    backend = hub._backend
    assert backend is not None
    deliver = backend.publish
    attempts = 0

    async def flaky(channel: str, message: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise ConnectionError("broker blip")
        await deliver(channel, message)

    backend.publish = flaky  # type: ignore[method-assign]
    try:
        async with hub.subscribe("room") as subscription:
            assert await hub.publish("room", "late but there") is False
            assert await asyncio.wait_for(anext(aiter(subscription)), 5) == "late but there"
        assert attempts == 3
    finally:
        await hub.disconnect()
