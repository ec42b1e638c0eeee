"""Work that must finish even when the request that started it is cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Unfinished:
    """Tasks that must run to the end (a send committed but not yet published), built by the
    app's lifespan and drained at shutdown. Holding them here also keeps the GC from
    collecting a task whose request went away."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to completion even if the caller is cancelled; return its result."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def drain(self, limit_s: float = 10.0) -> None:
        """Wait for every unfinished task (at shutdown), up to `limit_s` seconds."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=limit_s)
        if pending:
            log.warning("%d sends still unfinished at shutdown", len(pending))


class InCaller(Unfinished):
    """For callers that are never cancelled mid-way: the work runs in the caller's own task.

    An HTTP request is such a caller: uvicorn lets its task finish when the client goes away,
    and at shutdown waits for it (up to the graceful timeout) before the lifespan ends. That
    spares each send a task, a shield and two turns of the event loop."""

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        return await work


class Changes:
    """A signal that something changed (a subscription started or ended), for whoever waits on
    counts: take `event` before checking them, then wait on it, and no change is missed."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        """Wake everyone waiting, and start a new event for the next change."""
        event, self.event = self.event, asyncio.Event()
        event.set()

    async def wait(self) -> None:
        """Wait for the next change."""
        await self.event.wait()
