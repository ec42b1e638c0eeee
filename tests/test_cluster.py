"""README "Several instances", tested: scripts/run-cluster.sh (PostgreSQL, Redis, two instances
behind nginx), a chat through the proxy, one instance killed, and followers that resume
through the other with every message once.

It installs nginx when missing and needs the local PostgreSQL, so it runs only when asked:
`make test-cluster` (CI runs it after the PostgreSQL + Redis suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from api.core.settings import Settings
from tests.support import (
    MESSAGE_ADDED,
    ROOT,
    SEND,
    ChildProcess,
    GraphQLClient,
    GraphQLWebSocket,
    assert_exactly_once_in_order,
    free_port,
    open_direct_room,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("RUN_CLUSTER_TEST") != "1",
    reason="starts PostgreSQL, Redis and nginx: RUN_CLUSTER_TEST=1 (make test-cluster)",
)

SCRIPT = ROOT / "scripts" / "run-cluster.sh"
NGINX_PID = re.compile(r"nginx: pid (\d+)")
LAST_CURSOR = "query ($r: ID!) { messages(roomId: $r, last: 1) { edges { cursor } } }"
BEFORE_KILL, LAST = 10, 20
DEADLINE = 60.0


@pytest.fixture
async def cluster_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the cluster, dropped afterwards."""
    base = os.environ.get("TEST_DATABASE_URL") or (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"chat_cluster_{uuid.uuid4().hex[:12]}"
    admin = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


@pytest.fixture
async def cluster(cluster_database: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """scripts/run-cluster.sh, ready; stopped with Ctrl-C (SIGINT) afterwards."""
    port, first, second = free_port(), free_port(), free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
    }
    broadcast = os.environ.get("TEST_BROADCAST_URL", "")
    env |= {
        "PORT": str(port),
        "INSTANCE_PORTS": f"{first},{second}",
        "DATABASE_URL": cluster_database,
        "BROADCAST_URL": broadcast if broadcast.startswith("redis") else "redis://127.0.0.1:6379/0",
        "RUN_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    script = ChildProcess(["bash", str(SCRIPT)], "run-cluster: ready", env=env)
    # Installing nginx on a new machine takes a while.
    await script.start(timeout=300)
    pids = {
        int(match.group(1)): int(match.group(2))
        for line in script.output
        if (match := re.search(r"instance (\d+): pid (\d+)", line))
    }
    nginx = next(
        int(m.group(1)) for line in script.output if (m := re.search(r"nginx: pid (\d+)", line))
    )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "pids": pids, "nginx": nginx, "script": script}
    finally:
        assert script.process is not None
        if script.process.returncode is None:
            script.process.send_signal(signal.SIGINT)
            await asyncio.wait_for(script.process.wait(), 60)
        if script._drain is not None:
            await script._drain
        assert any("run-cluster: stopped" in line for line in script.output), script.output
        for pid in [*pids.values(), nginx]:
            assert not _alive(pid), f"process {pid} outlived the script"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of the finished script is gone for every purpose here.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


async def _send(client: GraphQLClient, room: str, number: int) -> None:
    """Send message `number`, retrying through the proxy while an instance dies (the client
    message id makes a retry of a send that did commit a no-op)."""
    variables = {"roomId": room, "data": f"m{number}", "clientMessageId": f"c{number}"}
    request = {"query": SEND, "variables": variables}
    for _ in range(50):
        try:
            response = await client.http.post("/graphql", json=request)
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
            continue
        if response.status_code == 200 and not response.json().get("errors"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"message {number} was never sent")


class Follower:
    """A device following the room through the proxy: on any close it reconnects (to whichever
    instance nginx picks) and resubscribes after the cursor of the last message it showed."""

    def __init__(self, ws_url: str, cookie: str, room: str, after: str) -> None:
        self.ws_url, self.cookie, self.room, self.cursor = ws_url, cookie, room, after
        self.seqs: list[int] = []
        self.resumed = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while len(self.seqs) < LAST - 1 and loop.time() < deadline:
            # Any failure of a socket (closed, refused, 502): resume, as clients do.
            with contextlib.suppress(Exception):
                await self._follow()
            if len(self.seqs) < LAST - 1:
                self.resumed += 1
                await asyncio.sleep(0.2)

    async def _follow(self) -> None:
        async with GraphQLWebSocket.connect(self.ws_url, cookie=self.cookie) as socket:
            subscription = await socket.subscribe(
                MESSAGE_ADDED, {"roomId": self.room, "after": self.cursor}
            )
            self.subscribed.set()
            while len(self.seqs) < LAST - 1:
                message = await subscription.next_message(timeout=DEADLINE)
                if message["type"] != "next":
                    return  # closed (the instance died), or an error: resume
                added = message["payload"]["data"]["messageAdded"]
                self.seqs.append(added["seq"])
                self.cursor = added["cursor"]


async def test_a_follower_resumes_through_the_other_instance_with_every_message_once(
    cluster: dict[str, Any],
) -> None:
    url = cluster["url"]
    ws_url = url.replace("http://", "ws://") + "/graphql"
    alice, bob = GraphQLClient(url), GraphQLClient(url)
    try:
        await alice.sign_up()
        bob_user = await bob.sign_up()
        room = await open_direct_room(alice, bob_user["name"])
        await _send(alice, room, 1)
        first = await bob.data(LAST_CURSOR, {"r": room})
        after = first["messages"]["edges"][0]["cursor"]

        # Two devices, connected one after the other: nginx's round robin puts them on
        # different instances, so whichever instance dies, one of them must resume.
        followers = [Follower(ws_url, bob.session_cookie, room, after) for _ in range(2)]
        tasks = []
        for follower in followers:
            tasks.append(asyncio.create_task(follower.run()))
            await asyncio.wait_for(follower.subscribed.wait(), 10)

        for number in range(2, BEFORE_KILL + 1):
            await _send(alice, room, number)
        os.kill(cluster["pids"][1], signal.SIGKILL)
        for number in range(BEFORE_KILL + 1, LAST + 1):
            await _send(alice, room, number)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE + 10)

        for follower in followers:
            assert_exactly_once_in_order(follower.seqs, 2, LAST)
        assert sum(follower.resumed for follower in followers) >= 1
        # The survivor still serves everything through the proxy.
        assert (await alice.data("query { me { name } }"))["me"]["name"]
    finally:
        await alice.aclose()
        await bob.aclose()
