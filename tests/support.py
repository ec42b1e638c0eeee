"""Test helpers: a GraphQL client over HTTP, WebSocket clients for both protocols, servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import websockets
from starlette.applications import Starlette
from websockets.typing import Subprotocol

from api.app import create_app
from api.cli import uvicorn_options
from api.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"

SIGN_UP = """
mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id name createdAt } expiresAt }
}
"""
SIGN_IN = """
mutation SignIn($name: String!, $password: String!) {
  signIn(name: $name, password: $password) { user { id name } expiresAt }
}
"""
ME = "query { me { id name } }"
SIGN_OUT = "mutation { signOut }"

_names = itertools.count()


def unique_name(prefix: str = "u") -> str:
    """A fresh, valid user name."""
    return f"{prefix}{next(_names)}_{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GraphQLClient:
    """An HTTP client with its own cookie jar (one browser, one device)."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30, **kwargs)
        self.user: dict[str, Any] | None = None

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, **kwargs
        )
        assert response.status_code == 200, (response.status_code, response.text)
        body: dict[str, Any] = response.json()
        return body

    async def data(self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """The data of a query that must succeed."""
        body = await self.post(query, variables, **kwargs)
        assert not body.get("errors"), body
        return body["data"]

    async def error(
        self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """The single error of a query that must fail."""
        body = await self.post(query, variables, **kwargs)
        assert body.get("errors"), body
        error: dict[str, Any] = body["errors"][0]
        return error

    @property
    def session_cookie(self) -> str:
        values = [
            cookie.value
            for cookie in self.http.cookies.jar
            if "session" in cookie.name and cookie.value
        ]
        assert values, "no session cookie"
        return values[0]

    async def sign_up(self, name: str | None = None, password: str = PASSWORD) -> dict[str, Any]:
        name = name or unique_name()
        data = await self.data(SIGN_UP, {"name": name, "password": password})
        self.user = data["signUp"]["user"]
        return self.user

    async def sign_in(self, name: str, password: str = PASSWORD) -> dict[str, Any]:
        data = await self.data(SIGN_IN, {"name": name, "password": password})
        self.user = data["signIn"]["user"]
        return self.user

    async def aclose(self) -> None:
        await self.http.aclose()


class WSClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason}")
        self.code = code
        self.reason = reason


class GraphQLWebSocket:
    """A minimal client of graphql-transport-ws (default) or the legacy graphql-ws protocol."""

    def __init__(self, connection: websockets.ClientConnection, protocol: str) -> None:
        self.connection = connection
        self.protocol = protocol
        self._ids = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[WSClosed] = asyncio.get_running_loop().create_future()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        cookie: str | None = None,
        cookie_name: str = "session",
        payload: dict[str, Any] | None = None,
        protocol: str = "graphql-transport-ws",
        origin: str | None = None,
        init: bool = True,
    ) -> AsyncIterator[GraphQLWebSocket]:
        headers = {}
        if cookie:
            headers["Cookie"] = f"{cookie_name}={cookie}"
        if origin:
            headers["Origin"] = origin
        async with websockets.connect(
            url,
            subprotocols=[Subprotocol(protocol)],
            additional_headers=headers,
            max_size=2**22,
        ) as connection:
            client = cls(connection, protocol)
            if init:
                await client.init(payload)
            try:
                yield client
            finally:
                if client._reader is not None:
                    client._reader.cancel()

    async def init(self, payload: dict[str, Any] | None = None) -> None:
        await self.send({"type": "connection_init", "payload": payload or {}})
        while True:
            message = await self.recv_raw()
            if message["type"] == "connection_ack":
                break
            if message["type"] == "ka":
                continue
            raise AssertionError(f"unexpected {message}")
        self._reader = asyncio.create_task(self._read())

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def recv_raw(self) -> dict[str, Any]:
        try:
            raw = await self.connection.recv()
        except websockets.ConnectionClosed as error:
            raise WSClosed(
                error.rcvd.code if error.rcvd else None, error.rcvd.reason if error.rcvd else ""
            ) from error
        message: dict[str, Any] = json.loads(raw)
        return message

    async def _read(self) -> None:
        try:
            while True:
                message = await self.recv_raw()
                if message["type"] in ("ping",):
                    await self.send({"type": "pong"})
                    continue
                if message["type"] == "ka":
                    continue
                queue = self._queues.get(message.get("id", ""))
                if queue is not None:
                    queue.put_nowait(message)
        except WSClosed as closed:
            if not self.closed.done():
                self.closed.set_result(closed)
            for queue in self._queues.values():
                queue.put_nowait({"type": "closed", "code": closed.code})

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> Subscription:
        op_id = str(next(self._ids))
        self._queues[op_id] = asyncio.Queue()
        kind = "subscribe" if self.protocol == "graphql-transport-ws" else "start"
        await self.send(
            {"type": kind, "id": op_id, "payload": {"query": query, "variables": variables or {}}}
        )
        return Subscription(self, op_id)


class Subscription:
    """One operation on a socket: next() returns its next result (data or errors)."""

    def __init__(self, socket: GraphQLWebSocket, op_id: str) -> None:
        self.socket = socket
        self.id = op_id

    async def next_message(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.socket._queues[self.id].get(), timeout)

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next payload; fails on complete, error or close."""
        message = await self.next_message(timeout)
        assert message["type"] in ("next", "data"), message
        payload: dict[str, Any] = message["payload"]
        return payload

    async def data(self, timeout: float = 10) -> Any:
        payload = await self.next(timeout)
        assert not payload.get("errors"), payload
        return payload["data"]

    async def stop(self) -> None:
        kind = "complete" if self.socket.protocol == "graphql-transport-ws" else "stop"
        await self.socket.send({"type": kind, "id": self.id})


class RunningServer:
    """A uvicorn server on a free port, in this event loop."""

    def __init__(self, app: Starlette, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                **uvicorn_options(settings),
            )
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


@contextlib.asynccontextmanager
async def running_server(settings: Settings, **kwargs: Any) -> AsyncIterator[RunningServer]:
    """Start the real app under uvicorn; stop it afterwards."""
    server = RunningServer(create_app(settings, **kwargs), settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


DIRECT_ROOM = "query Room($with: String!) { directRoom(with: $with) { id name } }"
SEND = """
mutation Send($roomId: ID!, $data: String!, $clientMessageId: String) {
  sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) {
    id seq data cursor sender { name }
  }
}
"""
MESSAGE_ADDED = """
subscription Follow($roomId: ID!, $after: String) {
  messageAdded(roomId: $roomId, after: $after) { id seq data cursor roomId sender { name } }
}
"""
INBOX = "subscription { inbox { id seq data roomId sender { name } } }"


async def open_direct_room(client: GraphQLClient, other_name: str) -> str:
    """The id of the direct room between the client's user and another."""
    data = await client.data(DIRECT_ROOM, {"with": other_name})
    room_id: str = data["directRoom"]["id"]
    return room_id


async def send(client: GraphQLClient, room_id: str, data: str, **extra: Any) -> dict[str, Any]:
    """Send a message that must succeed; returns it."""
    result = await client.data(SEND, {"roomId": room_id, "data": data, **extra})
    message: dict[str, Any] = result["sendMessage"]
    return message


def subscriptions_on(server: RunningServer, channel: str) -> int:
    """Live subscriptions on a channel: the delivery hub's (rooms, inboxes), else pub/sub's."""
    state = server.app.state.chat
    if channel in state.hub.channels:
        count: int = state.hub.subscribers(channel)
        return count
    return int(state.pubsub.subscribers(channel))


async def _until(server: RunningServer, settled: Any) -> None:
    state = server.app.state.chat

    async def wait() -> None:
        while True:
            # The events are taken before the check, so a change in between is not missed.
            events = (state.hub.changes.event, state.pubsub.changes.event)
            if settled():
                return
            changes = [asyncio.ensure_future(event.wait()) for event in events]
            _, pending = await asyncio.wait(changes, return_when=asyncio.FIRST_COMPLETED)
            for change in pending:
                change.cancel()

    try:
        await asyncio.wait_for(wait(), 10)
    except TimeoutError:
        channels = {name: len(channel.sinks) for name, channel in state.hub.channels.items()}
        pubsub = {name: len(ch.subscribers) for name, ch in state.pubsub._channels.items()}
        raise AssertionError(f"not settled: hub {channels}, pub/sub {pubsub}") from None


async def wait_for_subscribers(server: RunningServer, channel: str, count: int = 1) -> None:
    """Wait until the in-process server has `count` subscriptions on a channel."""
    await _until(server, lambda: subscriptions_on(server, channel) >= count)


def assert_exactly_once_in_order(seqs: list[int], first: int, last: int) -> None:
    """Every seq from first to last, each once, ascending; says what is lost, doubled, reordered."""
    expected = list(range(first, last + 1))
    if seqs == expected:
        return
    lost = sorted(set(expected) - set(seqs))
    doubled = sorted({s for s in seqs if seqs.count(s) > 1})
    reordered = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    raise AssertionError(
        f"lost={lost[:20]} ({len(lost)}), doubled={doubled[:20]} ({len(doubled)}), "
        f"out of order={reordered}, received={len(seqs)} expected={len(expected)}"
    )


async def wait_for_no_subscribers(server: RunningServer, channel: str) -> None:
    """Wait until the in-process server has no subscription left on a channel."""
    state = server.app.state.chat
    await _until(
        server,
        lambda: channel not in state.hub.channels and not state.pubsub.subscribers(channel),
    )


class ProcessFailed(Exception):
    pass


async def _wait_for_line(stream: asyncio.StreamReader, needle: str, seen: list[str]) -> None:
    while True:
        line = await stream.readline()
        if not line:
            raise ProcessFailed("exited before printing " + repr(needle) + ":\n" + "".join(seen))
        text = line.decode(errors="replace")
        seen.append(text)
        if needle in text:
            return


async def _drain(stream: asyncio.StreamReader, seen: list[str]) -> None:
    # Keep reading so the child never blocks on a full pipe.
    while line := await stream.readline():
        seen.append(line.decode(errors="replace"))


class ChildProcess:
    """A child process that is ready once it prints a line; output kept for failure reports."""

    def __init__(self, argv: list[str], ready_line: str, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.ready_line = ready_line
        self.env = env
        self.output: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 30) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
        )
        assert self.process.stdout is not None
        await asyncio.wait_for(
            _wait_for_line(self.process.stdout, self.ready_line, self.output), timeout
        )
        self._drain = asyncio.create_task(_drain(self.process.stdout, self.output))

    async def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        await asyncio.wait_for(self.process.wait(), 15)
        if self._drain is not None:
            await self._drain


class RedisServer(ChildProcess):
    """A private redis-server on a free port, which a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            "Ready to accept connections",
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class ServerProcess(ChildProcess):
    """`chat-backend serve` as a real process on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        # The code under test, even when the environment's editable install points at another
        # checkout of the project (a git worktree sharing its virtualenv).
        path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env = {**env, "PYTHONPATH": path}
        super().__init__(
            [str(Path(sys.executable).parent / "chat-backend"), "serve", "--port", str(self.port)],
            "Application startup complete",
            env=env,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"


def subscription_total(server: RunningServer) -> int:
    """Every subscription of the in-process server: the hub's, and pub/sub's own (session
    watchers and caches; the hub holds one pub/sub subscription per channel)."""
    state = server.app.state.chat
    hub_channels = sum(1 for channel in state.hub.channels.values() if channel.subscription)
    return int(state.hub.sink_count + state.pubsub.subscriber_count - hub_channels)


async def wait_for_subscriber_total(server: RunningServer, total: int) -> None:
    """Wait until the in-process server has exactly `total` subscriptions on all channels."""
    await _until(server, lambda: subscription_total(server) == total)


@contextlib.contextmanager
def captured_statements(db: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every statement (with its parameters) a Database runs inside the block, through either
    of its engines (SQLAlchemy's, and the asyncpg pool on PostgreSQL)."""
    from sqlalchemy import event

    engine = db.engine.sync_engine
    statements: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> None:
        statements.append((statement, parameters))

    def observe(statement: str, parameters: tuple[Any, ...]) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    if db.pg is not None:
        db.pg.observers.append(observe)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", capture)
        if db.pg is not None:
            db.pg.observers.remove(observe)
