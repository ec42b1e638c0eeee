"""Garbage-collection pauses of our server: recorded in the server process, read by the bench.

In the server (bench/serve.py, when BENCH_GC_PAUSES=<path> is set), a `gc.callbacks` hook times
every collection and counts it in a histogram per generation (buckets below), with the total and
the longest pause; pauses of 1 ms or more are also kept with their wall-clock time (the last
5,000). A daemon thread writes all of it as JSON to <path> every 0.5 s (write + rename), and once
more at exit. The hook costs about a microsecond per collection.

In the bench, `snapshot(path, not_before=t)` waits for a file written after `t`, and
`window(before, after)` gives what happened in between: collections, total and longest
pause, how many took over 20 ms, and the histogram.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

# Upper bounds (ms) of the buckets; the last bucket is everything above 100 ms.
BOUNDS_MS = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
LABELS = ("<1", "1-5", "5-10", "10-20", "20-50", "50-100", ">100")
OVER_20 = (4, 5, 6)  # bucket indexes above 20 ms
GENERATIONS = 3
EVENT_MIN_MS = 1.0


def _bucket(ms: float) -> int:
    for index, bound in enumerate(BOUNDS_MS):
        if ms < bound:
            return index
    return len(BOUNDS_MS)


class GcRecorder:
    """The in-server half: a gc callback and a writer thread."""

    def __init__(self, path: str, every_s: float = 0.5, keep: int = 5000) -> None:
        self.path = path
        self.every_s = every_s
        self.started_at = time.time()
        # Fixed-size lists, mutated in place only: the writer copies them without locks.
        self.counts = [[0] * len(LABELS) for _ in range(GENERATIONS)]
        self.total_ms = [0.0] * GENERATIONS
        self.max_ms = [0.0] * GENERATIONS
        self.events: deque[tuple[float, int, float]] = deque(maxlen=keep)
        self._t0 = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        ms = 1000 * (time.perf_counter() - self._t0)
        generation = min(max(int(info.get("generation", 0)), 0), GENERATIONS - 1)
        self.counts[generation][_bucket(ms)] += 1
        self.total_ms[generation] += ms
        if ms > self.max_ms[generation]:
            self.max_ms[generation] = ms
        if ms >= EVENT_MIN_MS:
            self.events.append((time.time(), generation, round(ms, 3)))

    def state(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "written_at": time.time(),
            "labels": list(LABELS),
            "event_min_ms": EVENT_MIN_MS,
            "generations": [
                {
                    "buckets": list(self.counts[g]),
                    "total_ms": round(self.total_ms[g], 3),
                    "max_ms": round(self.max_ms[g], 3),
                }
                for g in range(GENERATIONS)
            ],
            "events": list(self.events),
        }

    def write(self) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as handle:
                json.dump(self.state(), handle)
            os.replace(tmp, self.path)

    def _loop(self) -> None:
        while True:
            time.sleep(self.every_s)
            self.write()

    def install(self) -> None:
        gc.callbacks.append(self.callback)
        threading.Thread(target=self._loop, name="bench-gc-pauses", daemon=True).start()
        atexit.register(self.write)
        self.write()


def install_from_env() -> GcRecorder | None:
    path = os.environ.pop("BENCH_GC_PAUSES", "")
    if not path:
        return None
    recorder = GcRecorder(path)
    recorder.install()
    return recorder


# --------------------------------------------------------------------------------------------
# The bench's half


def read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


async def snapshot(path: Path, not_before: float, limit_s: float = 3.0) -> dict[str, Any] | None:
    """The recorder's file once it was written at or after `not_before` (wall clock)."""
    import asyncio

    deadline = time.monotonic() + limit_s
    while True:
        data = read(path)
        if data is not None and data.get("written_at", 0) >= not_before:
            return data
        if time.monotonic() > deadline:
            return data
        await asyncio.sleep(0.05)


def window(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Collections between two snapshots of one server, and the longest pause among them."""
    if not after:
        return None
    zero: dict[str, Any] = {"buckets": [0] * len(LABELS), "total_ms": 0.0, "max_ms": 0.0}
    gens_before = (before or {}).get("generations") or [zero] * GENERATIONS
    buckets = [0] * len(LABELS)
    per_generation = []
    total_ms = 0.0
    for g, gen_after in enumerate(after["generations"]):
        gen_before = gens_before[g] if g < len(gens_before) else zero
        delta = [a - b for a, b in zip(gen_after["buckets"], gen_before["buckets"], strict=True)]
        buckets = [x + y for x, y in zip(buckets, delta, strict=True)]
        ms = gen_after["total_ms"] - gen_before["total_ms"]
        total_ms += ms
        per_generation.append({"collections": sum(delta), "total_ms": round(ms, 1)})
    since = (before or {}).get("written_at", 0.0)
    in_window = [e for e in after.get("events", []) if since < e[0] <= after["written_at"]]
    longest = max((e[2] for e in in_window), default=None)
    worst_bucket = max((i for i, n in enumerate(buckets) if n), default=None)
    collections = sum(buckets)
    if longest is None and collections:
        # Nothing of 1 ms or more was logged in the window: every pause was shorter.
        longest = 0.0 if worst_bucket == 0 else None
    for g, info in enumerate(per_generation):
        info["max_ms"] = max((e[2] for e in in_window if e[1] == g), default=None)
    return {
        "collections": collections,
        "total_ms": round(total_ms, 1),
        "max_ms": longest,
        "max_below_1ms": bool(collections) and worst_bucket == 0,
        "over_20ms": sum(buckets[i] for i in OVER_20),
        "buckets": dict(zip(LABELS, buckets, strict=True)),
        "generations": per_generation,
    }


def combine(windows: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several servers' (or steps') windows as one: sums, and the longest pause."""
    present = [w for w in windows if w]
    if not present:
        return None
    longest = [w["max_ms"] for w in present if w["max_ms"] is not None]
    return {
        "collections": sum(w["collections"] for w in present),
        "total_ms": round(sum(w["total_ms"] for w in present), 1),
        "max_ms": max(longest) if longest else None,
        "max_below_1ms": all(w["max_below_1ms"] or not w["collections"] for w in present),
        "over_20ms": sum(w["over_20ms"] for w in present),
        "buckets": {
            label: sum(w["buckets"][label] for w in present) for label in present[0]["buckets"]
        },
    }


def describe(info: dict[str, Any] | None) -> str:
    """'3.2 / 0' (longest pause ms / pauses over 20 ms), '<1 / 0', or '-'."""
    if not info:
        return "-"
    if info["max_below_1ms"]:
        longest = "<1"
    elif info["max_ms"] is None:
        longest = "?"
    else:
        longest = f"{info['max_ms']:.1f}"
    return f"{longest} / {info['over_20ms']}"
