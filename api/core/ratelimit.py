"""The only module that touches the `limits` library: named rate limits, shared through Redis.

With BROADCAST_URL=redis://..., counters live in Redis so every instance enforces the same
limit; otherwise in memory. If the counter store fails, requests are let through (logged):
an outage of Redis must not stop people from chatting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from api.core.errors import RateLimited
from api.core.settings import parse_rates

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limit:
    """A named set of rates (for example burst and sustained) for one kind of action."""

    name: str
    items: tuple[RateLimitItem, ...]
    message: str

    @classmethod
    def parse(cls, name: str, text: str, message: str) -> Limit:
        items = tuple(
            # limits counts whole seconds; round a fractional period up, never down.
            RateLimitItemPerSecond(count, max(1, math.ceil(period)), namespace=name)
            for count, period in parse_rates(text)
        )
        return cls(name=name, items=items, message=message)

    @property
    def enabled(self) -> bool:
        return bool(self.items)


def create_storage(url: str, *, redis_pool: Any = None) -> Storage:
    """Counters in Redis when pub/sub runs on Redis (shared by instances), else in memory.

    With `redis_pool` (api.core.pubsub's), the counters use its connections: one module owns
    the app's Redis connections, and this one closes none of them.
    """
    if urlparse(url).scheme in ("redis", "rediss"):
        if redis_pool is not None:
            return RedisStorage(
                "async+" + url,
                implementation="redispy",
                key_prefix="chat-rl",
                connection_pool=redis_pool,
            )
        return RedisStorage(
            "async+" + url, implementation="redispy", key_prefix="chat-rl", socket_timeout=1
        )
    return MemoryStorage()


class RateLimiter:
    """Checks and counts actions against limits; RATE_LIMITED with retryAfterMs when over."""

    def __init__(self, storage: Storage, limits: Limits, *, owns_connections: bool = True) -> None:
        self._storage = storage
        self._owns_connections = owns_connections
        self._limiter = MovingWindowRateLimiter(storage)
        self.limits = limits
        self._in_flight: dict[tuple[str, str], list[Any]] = {}
        # Refusals by limit name, for /metrics.
        self.refused: collections.Counter[str] = collections.Counter()

    async def close(self) -> None:
        """Close the counter store's connections (limits has no public close; its Redis
        storage keeps a redis-py client on its bridge)."""
        if not self._owns_connections:
            return  # pub/sub's pool: closed with pub/sub
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        if client is not None and hasattr(client, "aclose"):
            try:
                await client.aclose()
            except Exception as error:  # noqa: BLE001 - closing a dead connection may fail
                log.debug("closing rate limit storage: %s", error)

    async def _retry_after_ms(self, limit: Limit, key: str) -> int | None:
        """None while every rate has room, else how long until the tightest one has."""
        waits = []
        for item in limit.items:
            if not await self._limiter.test(item, key):
                stats = await self._limiter.get_window_stats(item, key)
                waits.append(max(1, math.ceil((stats.reset_time - time.time()) * 1000)))
        return max(waits) if waits else None

    async def check(self, limit: Limit, key: str) -> None:
        """Raise RATE_LIMITED if the key has no room left (counts nothing)."""
        if not limit.enabled:
            return
        try:
            retry_after_ms = await self._retry_after_ms(limit, key)
        except Exception as error:  # noqa: BLE001 - fail open when the counter store is down
            log.warning("rate limit check for %s failed open: %s", limit.name, error)
            return
        if retry_after_ms is not None:
            self.refused[limit.name] += 1
            raise RateLimited(limit.message, retry_after_ms=retry_after_ms)

    async def count(self, limit: Limit, key: str) -> None:
        """Record one action against every rate of the limit."""
        if not limit.enabled:
            return
        try:
            for item in limit.items:
                await self._limiter.hit(item, key)
        except Exception as error:  # noqa: BLE001 - fail open when the counter store is down
            log.warning("rate limit count for %s failed open: %s", limit.name, error)

    async def acquire(self, limit: Limit, key: str) -> None:
        """Check, then count: for actions limited whether or not they succeed (sending)."""
        if not limit.enabled:
            return
        try:
            for item in limit.items:
                if not await self._limiter.hit(item, key):
                    retry_after_ms = await self._retry_after_ms(limit, key) or 1000
                    self.refused[limit.name] += 1
                    raise RateLimited(limit.message, retry_after_ms=retry_after_ms)
        except RateLimited:
            raise
        except Exception as error:  # noqa: BLE001 - fail open when the counter store is down
            log.warning("rate limit for %s failed open: %s", limit.name, error)

    @asynccontextmanager
    async def in_flight(self, limit: Limit, key: str, *, at_most: int = 4) -> AsyncIterator[None]:
        """Cap concurrent actions per key in this process, for limits counted after the fact:
        parallel requests can then add at most `at_most` uncounted tries per instance."""
        if not limit.enabled:
            yield
            return
        slot = (limit.name, key)
        entry = self._in_flight.get(slot)
        if entry is None:
            entry = self._in_flight[slot] = [asyncio.Semaphore(at_most), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._in_flight[slot]

    async def reset(self, limit: Limit, key: str) -> None:
        """Forget a key's counts (after a successful sign-in, failures no longer matter)."""
        try:
            for item in limit.items:
                await self._limiter.clear(item, key)
        except Exception as error:  # noqa: BLE001 - a stale count only delays, never breaks
            log.warning("rate limit reset for %s failed: %s", limit.name, error)


@dataclass(frozen=True, slots=True)
class Limits:
    """The service's limits, from settings."""

    messages: Limit
    sign_in: Limit
    sign_in_per_address: Limit
    sign_up_per_address: Limit

    @classmethod
    def from_settings(
        cls, *, messages: str, sign_in: str, sign_in_per_address: str, sign_up_per_address: str
    ) -> Limits:
        return cls(
            sign_up_per_address=Limit.parse(
                "sign-up-address",
                sign_up_per_address,
                "Too many sign-ups from this address; wait and retry.",
            ),
            messages=Limit.parse("messages", messages, "You are sending messages too fast."),
            sign_in=Limit.parse(
                "sign-in", sign_in, "Too many failed sign-ins for this account; wait and retry."
            ),
            sign_in_per_address=Limit.parse(
                "sign-in-address",
                sign_in_per_address,
                "Too many failed sign-ins from this address; wait and retry.",
            ),
        )
