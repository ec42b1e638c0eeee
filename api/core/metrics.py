"""Prometheus metrics: the one module that touches prometheus_client.

The hot paths never call a labelled metric per delivery. What they already count in plain
ints (the hub's deliveries, the pool's waits, the limiter's refusals...) is copied into
counters and gauges by `Metrics.sync`, at scrape time and, when another process or thread
scrapes (multiprocess mode, METRICS_PORT), every SYNC_INTERVAL seconds. Only histograms are
observed as things happen, and at most once per event group, per request or per collection.

With `serve --workers N` the CLI sets PROMETHEUS_MULTIPROC_DIR before the workers start: every
worker then writes its values to files there, and a scrape of any worker (or of METRICS_PORT,
served by the CLI's supervising process) adds them up (MultiProcessCollector). The library's
process and GC collectors describe one process only, so they are left out in that mode.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds between syncs of the plain counters when a scrape can come from elsewhere.
SYNC_INTERVAL = 5.0
# Distinct operation names kept as labels; later ones are counted as "other".
MAX_OPERATION_NAMES = 200

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process writes its values there."""
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass(slots=True)
class Sample:
    """What the app counts in plain numbers, read at once (built by api.monitoring)."""

    websockets: Mapping[str, int] = field(default_factory=dict)
    subscriptions: Mapping[str, int] = field(default_factory=dict)
    deliveries: int = 0
    sockets_behind: int = 0
    sockets_closed_behind: int = 0
    resync_refills: int = 0
    db_in_use: Mapping[str, int] = field(default_factory=dict)
    db_waits: int = 0
    db_errors: Mapping[str, int] = field(default_factory=dict)
    broker_reconnects: int = 0
    publish_retries: int = 0
    rate_limited: Mapping[str, int] = field(default_factory=dict)


class Metrics:
    """The app's metrics, in a registry of its own (one per app, so tests can build many)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        registry = self.registry = CollectorRegistry(auto_describe=True)
        self.websockets = Gauge(
            "chat_websockets_open",
            "Open WebSockets",
            ["protocol"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.subscriptions = Gauge(
            "chat_subscriptions_active",
            "Active subscriptions served by the hub",
            ["field"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.deliveries = Counter(
            "chat_deliveries", "Subscription results written to sockets", registry=registry
        )
        self.delivery_latency = Histogram(
            "chat_delivery_latency_seconds",
            "From the log entry's commit to its socket writes (one observation per event and "
            "result shape)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sockets_behind = Counter(
            "chat_sockets_behind", "Times a socket fell behind (writes paused)", registry=registry
        )
        self.sockets_closed_behind = Counter(
            "chat_sockets_closed_behind",
            "Sockets closed for staying behind (1013)",
            registry=registry,
        )
        self.resync_refills = Counter(
            "chat_resync_refills",
            "Subscriptions refilled from the database after a RESYNC",
            registry=registry,
        )
        self.sends = Counter(
            "chat_sends", "sendMessage operations by outcome code", ["outcome"], registry=registry
        )
        self.send_latency = Histogram(
            "chat_send_latency_seconds",
            "sendMessage over HTTP, from the request body read to the response",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.operations = Counter(
            "chat_graphql_operations",
            "GraphQL operations over HTTP by type, name and outcome code",
            ["type", "name", "outcome"],
            registry=registry,
        )
        self.db_in_use = Gauge(
            "chat_db_connections_in_use",
            "Database connections lent out",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.db_waits = Counter(
            "chat_db_pool_waits", "Waits for a free asyncpg connection", registry=registry
        )
        self.db_errors = Counter(
            "chat_db_errors", "Database errors by kind", ["kind"], registry=registry
        )
        self.broker_reconnects = Counter(
            "chat_broker_reconnects", "Pub/sub broker reconnections", registry=registry
        )
        self.publish_retries = Counter(
            "chat_broker_publish_retries", "Publishes retried in the background", registry=registry
        )
        self.rate_limited = Counter(
            "chat_rate_limited", "Requests refused by a rate limit", ["limit"], registry=registry
        )
        self.gc_pause = Histogram(
            "chat_gc_pause_seconds",
            "Garbage collector pauses by generation",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=registry,
        )
        if not self.multiprocess:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._seen: dict[str, float] = {}
        self._names: set[str] = set()
        self._operations: dict[tuple[str, str, str], Any] = {}
        self._sends: dict[str, Any] = {"OK": self.sends.labels("OK")}
        self._gc_children = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        self._gc_started = 0.0
        self._gc_watching = False
        self._lock = threading.Lock()

    # --- as things happen -----------------------------------------------------------------

    def operation(self, kind: str, name: str | None, outcome: str) -> None:
        """Count one GraphQL operation (its name bounded: see MAX_OPERATION_NAMES)."""
        label = self._bounded_name(name)
        key = (kind, label, outcome)
        child = self._operations.get(key)
        if child is None:
            child = self._operations[key] = self.operations.labels(kind, label, outcome)
        child.inc()

    def send(self, outcome: str, seconds: float) -> None:
        """Count one sendMessage and its latency."""
        child = self._sends.get(outcome)
        if child is None:
            child = self._sends[outcome] = self.sends.labels(outcome)
        child.inc()
        self.send_latency.observe(seconds)

    def _bounded_name(self, name: str | None) -> str:
        if not name:
            return "anonymous"
        if name in self._names:
            return name
        if len(self._names) >= MAX_OPERATION_NAMES:
            return "other"
        self._names.add(name)
        return name

    def watch_gc(self) -> None:
        """Observe every garbage collection's pause (until `unwatch_gc`)."""
        if not self._gc_watching:
            gc.callbacks.append(self._on_gc)
            self._gc_watching = True

    def unwatch_gc(self) -> None:
        if self._gc_watching:
            gc.callbacks.remove(self._on_gc)
            self._gc_watching = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # The same clock and bookkeeping as bench/gcstats.py.
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_children[info["generation"]].observe(time.perf_counter() - self._gc_started)

    # --- at scrape time -------------------------------------------------------------------

    def sync(self, sample: Sample) -> None:
        """Copy the app's plain counts into the metrics."""
        with self._lock:
            self._gauges(self.websockets, sample.websockets)
            self._gauges(self.subscriptions, sample.subscriptions)
            self._gauges(self.db_in_use, sample.db_in_use)
            self._count(self.deliveries, "deliveries", sample.deliveries)
            self._count(self.sockets_behind, "behind", sample.sockets_behind)
            self._count(self.sockets_closed_behind, "closed_behind", sample.sockets_closed_behind)
            self._count(self.resync_refills, "resync", sample.resync_refills)
            self._count(self.db_waits, "db_waits", sample.db_waits)
            self._count(self.broker_reconnects, "reconnects", sample.broker_reconnects)
            self._count(self.publish_retries, "publish_retries", sample.publish_retries)
            for kind, value in sample.db_errors.items():
                self._count(self.db_errors.labels(kind), f"db_errors:{kind}", value)
            for limit, value in sample.rate_limited.items():
                self._count(self.rate_limited.labels(limit), f"rate_limited:{limit}", value)

    @staticmethod
    def _gauges(gauge: Gauge, values: Mapping[str, int]) -> None:
        for label, value in values.items():
            gauge.labels(label).set(value)

    def _count(self, counter: Any, key: str, total: float) -> None:
        # Counters only go up: the plain total since start minus what was already added.
        last = self._seen.get(key, 0.0)
        if total > last:
            counter.inc(total - last)
            self._seen[key] = total

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape reads: this registry, or every worker's files added up."""
        if not self.multiprocess:
            return self.registry
        return multiprocess_registry()

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.scrape_registry())

    def close(self) -> None:
        """The process is leaving: its live gauges stop counting (multiprocess mode)."""
        self.unwatch_gc()
        path = multiprocess_dir()
        if path is not None:
            multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


def multiprocess_registry() -> CollectorRegistry:
    """A registry that adds up every process's values in PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir())  # type: ignore[no-untyped-call]
    return registry


def serve_port(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> Callable[[], None]:  # noqa: S104 - a separate listener, meant to be reached by the scraper
    """Serve /metrics on a port of its own (a thread); returns its stop function."""
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for the workers about to start (the CLI's); an existing
    one set by the operator is used as it is (and not removed)."""
    existing = multiprocess_dir()
    if existing is not None:
        yield existing
        return
    path = tempfile.mkdtemp(prefix="chat-backend-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
