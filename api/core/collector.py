"""When the garbage collector runs: a policy chosen by measuring pauses (bench/gcstats.py).

CPython's full collection walks every tracked object. A server holding a few hundred sockets
keeps hundreds of thousands of them alive (protocols, parsers, handlers, tasks), so a full
collection stops the event loop for 50-200 ms, which is every delivery's p99. Objects that
survive a while are almost always long-lived (a socket lives for minutes or hours), so every
`freeze_interval` seconds the keeper collects what is young (cheap: only what was created since
the last pass) and freezes the survivors, which takes them out of every later collection. Only
the youngest generation is collected first: a full collection of a second's survivors took up
to 100 ms under load (a backlog of requests in flight). The price: a cycle that becomes garbage
after being frozen (a closed socket whose objects reference each other, an exception's
traceback) is not reclaimed until the next full pass, every `full_interval` seconds, which
unfreezes, collects everything once and freezes again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


class CollectorPolicy:
    """Runs the collection policy until cancelled (a task of the app's lifespan)."""

    def __init__(self, *, freeze_interval: float, full_interval: float) -> None:
        self.freeze_interval = freeze_interval
        self.full_interval = full_interval
        self.passes = 0
        self.full_passes = 0

    def start(self) -> asyncio.Task[None] | None:
        """Start the keeper; None when the policy is off (CPython's defaults apply)."""
        if not self.freeze_interval:
            return None
        return asyncio.create_task(self._run(), name="gc-keeper")

    async def _run(self) -> None:
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.freeze_interval)
            if self.full_interval and time.monotonic() - last_full >= self.full_interval:
                self.full()
                last_full = time.monotonic()
            else:
                self.freeze_survivors()

    def freeze_survivors(self) -> None:
        """Collect the youngest generation, then freeze what is left."""
        gc.collect(0)
        gc.freeze()
        self.passes += 1

    def full(self) -> None:
        """Reclaim cycles among frozen objects too (one pause over every live object)."""
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.full_passes += 1
        log.info("full garbage collection took %.0f ms", 1000 * (time.perf_counter() - started))
