"""/metrics: what it exposes after some activity, who may read it, and workers adding up."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.core.settings import Environment
from tests.conftest import TEST_ITERATIONS, TEST_SECRET, make_settings
from tests.support import (
    MESSAGE_ADDED,
    ROOT,
    SEND,
    ChildProcess,
    GraphQLClient,
    GraphQLWebSocket,
    RedisServer,
    RunningServer,
    free_port,
    open_direct_room,
    running_server,
    send,
    unique_name,
    wait_for_subscribers,
)

# The names dashboards and alerts are built on (docs/grafana-dashboard.json): renaming one
# breaks them, so a change here must be deliberate.
STABLE_NAMES = {
    "chat_websockets_open",
    "chat_subscriptions_active",
    "chat_deliveries",
    "chat_delivery_latency_seconds",
    "chat_sockets_behind",
    "chat_sockets_closed_behind",
    "chat_resync_refills",
    "chat_sends",
    "chat_send_latency_seconds",
    "chat_graphql_operations",
    "chat_db_connections_in_use",
    "chat_db_pool_waits",
    "chat_db_errors",
    "chat_broker_reconnects",
    "chat_broker_publish_retries",
    "chat_rate_limited",
    "chat_gc_pause_seconds",
}
PROCESS_NAMES = {"process_cpu_seconds", "process_resident_memory_bytes"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    """The metric family names, and every sample by (name, labels)."""
    names: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return names, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sum over every sample of `metric` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == metric and wanted <= ls)


@pytest.fixture(scope="module")
async def metrics_server(
    database_url: str, broadcast_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    """Development mode (/metrics open), one message per minute per user."""
    settings = make_settings(database_url, broadcast_url, data_dir, rate_limit_messages="1/60s")
    async with running_server(settings, run_migrations=False) as server:
        yield server


async def test_metrics_expose_each_metric_after_a_send_to_a_subscriber(
    metrics_server: RunningServer,
) -> None:
    alice, bob = GraphQLClient(metrics_server.url), GraphQLClient(metrics_server.url)
    try:
        await alice.sign_up()
        bob_user = await bob.sign_up()
        room_id = await open_direct_room(alice, bob_user["name"])
        async with GraphQLWebSocket.connect(
            metrics_server.ws_url, cookie=bob.session_cookie
        ) as socket:
            follow = await socket.subscribe(MESSAGE_ADDED, {"roomId": room_id})
            await wait_for_subscribers(metrics_server, f"room:{room_id}")
            await send(alice, room_id, "hello")
            assert (await follow.data())["messageAdded"]["data"] == "hello"
            refused = await alice.error(SEND, {"roomId": room_id, "data": "again"})
            assert refused["extensions"]["code"] == "RATE_LIMITED"
            gc.collect()
            response = await alice.http.get("/metrics")
    finally:
        await alice.aclose()
        await bob.aclose()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names, samples = parse(response.text)
    assert names >= STABLE_NAMES | PROCESS_NAMES
    assert value(samples, "chat_websockets_open", protocol="graphql-transport-ws") >= 1
    assert value(samples, "chat_subscriptions_active", field="messageAdded") >= 1
    assert value(samples, "chat_deliveries_total") >= 1
    assert value(samples, "chat_delivery_latency_seconds_count") >= 1
    assert value(samples, "chat_sends_total", outcome="OK") >= 1
    assert value(samples, "chat_sends_total", outcome="RATE_LIMITED") >= 1
    assert value(samples, "chat_send_latency_seconds_count") >= 2
    assert value(samples, "chat_rate_limited_total", limit="messages") >= 1
    assert total(samples, "chat_graphql_operations_total", type="mutation", name="Send") >= 2
    assert total(samples, "chat_graphql_operations_total", type="mutation", outcome="OK") >= 3
    assert total(samples, "chat_gc_pause_seconds_count", generation="2") >= 1
    assert total(samples, "chat_db_connections_in_use") >= 0
    assert value(samples, "process_cpu_seconds_total") > 0


async def test_unnamed_operations_are_anonymous_and_names_are_bounded(
    metrics_server: RunningServer,
) -> None:
    metrics = metrics_server.app.state.chat.monitoring.metrics
    async with httpx.AsyncClient(base_url=metrics_server.url) as http:
        await http.post("/graphql", json={"query": "{ __typename }"})
        for index in range(3):
            await http.post("/graphql", json={"query": f"query Q{index} {{ __typename }}"})
        text = (await http.get("/metrics")).text
    _, samples = parse(text)
    assert total(samples, "chat_graphql_operations_total", name="anonymous", type="query") >= 1
    assert value(samples, "chat_graphql_operations_total", type="query", name="Q1", outcome="OK")
    # Past the cap, every new name is "other": a client cannot grow the label set.
    names = metrics._names
    saved = set(names)
    names.update(f"filler{i}" for i in range(300))
    try:
        assert metrics._bounded_name("SomethingNew") == "other"
        assert metrics._bounded_name("Q1") == "Q1"
    finally:
        names.clear()
        names.update(saved)


async def test_production_metrics_need_the_bearer_token(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    settings = make_settings(
        database_url,
        broadcast_url,
        data_dir,
        environment=Environment.PRODUCTION,
        metrics_token="scrape-secret",
    )
    async with (
        running_server(settings, run_migrations=False) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert "chat_deliveries_total" in right.text


async def test_production_without_a_token_serves_metrics_only_on_the_metrics_port(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    port = free_port()
    settings = make_settings(
        database_url,
        broadcast_url,
        data_dir,
        environment=Environment.PRODUCTION,
        metrics_port=port,
    )
    async with (
        running_server(settings, run_migrations=False) as server,
        httpx.AsyncClient() as http,
    ):
        main = await http.get(f"{server.url}/metrics")
        for _ in range(100):  # the listener starts with the lifespan's metrics task
            try:
                separate = await http.get(f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
    assert main.status_code == 404
    assert separate.status_code == 200
    assert "chat_websockets_open" in separate.text


async def test_metrics_off_leaves_no_endpoint_and_no_hooks(
    database_url: str, broadcast_url: str, data_dir: Path
) -> None:
    settings = make_settings(database_url, broadcast_url, data_dir, metrics=False)
    async with (
        running_server(settings, run_migrations=False) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        response = await http.get("/metrics")
        state = server.app.state.chat
        assert state.monitoring is None
        assert state.hub.observe_latency is None
    assert response.status_code == 404


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_workers_add_up_in_multiprocess_mode(database_url: str, tmp_path: Path) -> None:
    redis = RedisServer()
    await redis.start()
    port, metrics_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEST_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        DATABASE_URL=database_url,
        BROADCAST_URL=redis.url,
        SECRET_KEY=TEST_SECRET,
        PBKDF2_ITERATIONS=str(TEST_ITERATIONS),
        DATA_DIR=str(tmp_path),
        METRICS_PORT=str(metrics_port),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    argv = [str(Path(sys.executable).parent / "chat-backend"), "serve", "--workers", "2"]
    server = ChildProcess([*argv, "--port", str(port)], "Application startup complete", env=env)
    try:
        await server.start(timeout=60)
        name = unique_name("Op")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(4):
                # New connections, so the kernel may hand them to either worker.
                response = await http.post(
                    "/graphql",
                    json={"query": f"query {name} {{ __typename }}"},
                    headers={"Connection": "close"},
                )
                assert response.status_code == 200
            scraped = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            main = await http.get("/metrics")
    finally:
        await server.stop()
        await redis.stop()
    assert scraped.status_code == 200, "".join(server.output)
    for text in (scraped.text, main.text):
        names, samples = parse(text)
        assert names >= STABLE_NAMES
        assert total(samples, "chat_graphql_operations_total", name=name) == 4


def test_the_grafana_dashboard_reads_only_the_stable_names() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for expr in expressions
        for name in re.findall(r"\b((?:chat|process)_[a-z_]+)", expr)
    }
    assert used <= STABLE_NAMES | PROCESS_NAMES
    assert used >= STABLE_NAMES
