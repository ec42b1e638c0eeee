"""The load generator: lean HTTP/1.1 and WebSocket clients on asyncio protocols (uvloop).

No client library sits in the hot path: an HTTP connection is an asyncio.Protocol with
httptools' response parser; a WebSocket is an asyncio.Protocol with a hand-written frame parser
(client frames carry a zero mask key, which RFC 6455 allows, so masking copies nothing).

Every measured message carries its index `k` in its data ("<k>|padding"). The Tracker keeps, per
k, the scheduled send time, how many subscriptions must receive it and how many did; per socket
the seqs it has seen (a bytearray indexed by seq), so duplicates and out-of-order deliveries are
counted exactly.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import socket
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httptools
import orjson

perf = time.perf_counter

SIGN_UP = (
    "mutation SignUp($name: String!, $password: String!) "
    "{ signUp(name: $name, password: $password) { user { id name } expiresAt } }"
)
DIRECT_ROOM = "query Room($with: String!) { directRoom(with: $with) { id name } }"
SEND = (
    "mutation Send($roomId: ID!, $data: String!, $clientMessageId: String) "
    "{ sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) "
    "{ id seq createdAt } }"
)
# What a chat client shows for a live message.
MESSAGE_FIELDS = "id roomId seq type data createdAt clientMessageId cursor sender { id name }"
MESSAGE_ADDED = (
    "subscription Follow($roomId: ID!) { messageAdded(roomId: $roomId) { " + MESSAGE_FIELDS + " } }"
)
INBOX = "subscription Inbox { inbox { " + MESSAGE_FIELDS + " } }"
# The activity mix's other operations, selecting what a client shows after them.
EDIT = (
    "mutation Edit($messageId: ID!, $data: String!) "
    "{ editMessage(messageId: $messageId, data: $data) { id seq data editedAt } }"
)
REACT = (
    "mutation React($messageId: ID!, $emoji: String!) "
    "{ addReaction(messageId: $messageId, emoji: $emoji) { id reactions { emoji count me } } }"
)
# 20 = the server's limit of different reactions per user and message.
EMOJIS = [chr(0x1F600 + i) for i in range(20)]
PASSWORD = "bench password 1234"


class SetupError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# HTTP


class _HttpConn(asyncio.Protocol):
    __slots__ = ("body", "callback", "cookies", "got_bytes", "parser", "pool", "raw", "transport")

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.cookies: list[bytes] = []
        self.callback: Callable[[int, bytes, list[bytes], BaseException | None], None] | None = None
        self.raw = b""  # the request in flight, for one retry on a stale keep-alive connection
        self.got_bytes = False

    def write(self, raw: bytes, callback: Any) -> None:
        self.raw = raw
        self.got_bytes = False
        self.callback = callback
        self.transport.write(raw)  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []
        self.cookies = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"set-cookie":
            self.cookies.append(value)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        callback, self.callback = self.callback, None
        keep = self.parser.should_keep_alive()
        if callback is not None:
            callback(self.parser.get_status_code(), b"".join(self.body), self.cookies, None)
        self.pool._release(self, keep)

    def _fail(self, error: BaseException) -> None:
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(0, b"", [], error)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.callback is not None and not self.got_bytes and self.raw:
            # The server closed an idle keep-alive connection as we wrote to it: nothing was
            # processed, so the request goes out again on another connection (once).
            callback, self.callback = self.callback, None
            self.pool.retries += 1
            self.pool._lost(self)
            self.pool._requeue(self.raw, callback)
            return
        self._fail(exc or ConnectionError("connection closed"))
        self.pool._lost(self)


class HttpPool:
    """Keep-alive connections to one server; a request takes an idle one or opens another.

    Open loop: request() never waits. When every connection is busy and the cap is reached,
    requests queue here (and their latency, timed from the schedule, includes the wait).
    """

    def __init__(self, host: str, port: int, max_connections: int = 256) -> None:
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle: list[_HttpConn] = []
        self.open = 0
        self.connecting = 0
        self.queue: deque[tuple[bytes, Any]] = deque()
        self.in_flight = 0
        self.peak_open = 0
        self.retries = 0
        self._prefix = (
            f"POST /graphql HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nUser-Agent: chat-bench\r\n"
        ).encode()

    def request(
        self,
        body: bytes,
        cookie: str | None,
        callback: Callable[[int, bytes, list[bytes], BaseException | None], None],
    ) -> None:
        head = self._prefix + b"Content-Length: %d\r\n" % len(body)
        if cookie:
            head += b"Cookie: session=" + cookie.encode() + b"\r\n"
        raw = head + b"\r\n" + body
        self.in_flight += 1

        def done(status: int, payload: bytes, cookies: list[bytes], error: Any) -> None:
            self.in_flight -= 1
            callback(status, payload, cookies, error)

        self._dispatch(raw, done)

    def _dispatch(self, raw: bytes, done: Any) -> None:
        if self.idle:
            self.idle.pop().write(raw, done)
        else:
            self.queue.append((raw, done))
            self._grow()

    def _requeue(self, raw: bytes, done: Any) -> None:
        def once(status: int, payload: bytes, cookies: list[bytes], error: Any) -> None:
            done(status, payload, cookies, error)

        # A second reset is an error (the retry carries no raw bytes to resend).
        if self.idle:
            conn = self.idle.pop()
            conn.write(raw, once)
            conn.raw = b""
        else:
            self.queue.appendleft((b"\0" + raw, once))
            self._grow()

    def _grow(self) -> None:
        while self.open + self.connecting < self.max_connections and self.connecting < len(
            self.queue
        ):
            self.connecting += 1
            asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _HttpConn(self), self.host, self.port)
        except OSError as error:
            self.connecting -= 1
            if self.queue:
                _, done = self.queue.popleft()
                done(0, b"", [], error)
            return
        self.connecting -= 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self._release(conn, True)

    def _release(self, conn: _HttpConn, keep: bool) -> None:
        if not keep:
            if conn.transport is not None:
                conn.transport.close()
            return
        if self.queue:
            raw, done = self.queue.popleft()
            if raw[:1] == b"\0":  # a retried request: no second retry
                conn.write(raw[1:], done)
                conn.raw = b""
            else:
                conn.write(raw, done)
        else:
            self.idle.append(conn)

    def _lost(self, conn: _HttpConn) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.queue:
            self._grow()

    async def warm(self, count: int) -> None:
        """Open connections ahead of a measured phase."""
        loop = asyncio.get_running_loop()
        need = max(0, count - self.open)
        for _ in range(need):
            _, conn = await loop.create_connection(lambda: _HttpConn(self), self.host, self.port)
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)
            self.idle.append(conn)

    async def post(
        self, query: str, variables: dict[str, Any], cookie: str | None = None
    ) -> tuple[Any, list[bytes]]:
        """One request, awaited (setup only): (parsed JSON body, Set-Cookie values)."""
        future: asyncio.Future[tuple[Any, list[bytes]]] = asyncio.get_running_loop().create_future()

        def done(status: int, payload: bytes, cookies: list[bytes], error: Any) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(SetupError(f"HTTP request failed: {error!r}"))
            elif status != 200:
                future.set_exception(SetupError(f"HTTP {status}: {payload[:300]!r}"))
            else:
                future.set_result((orjson.loads(payload), list(cookies)))

        self.request(orjson.dumps({"query": query, "variables": variables}), cookie, done)
        return await future

    async def data(self, query: str, variables: dict[str, Any], cookie: str | None = None) -> Any:
        body, _ = await self.post(query, variables, cookie)
        if body.get("errors"):
            raise SetupError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


def session_cookie(cookies: list[bytes]) -> str:
    for raw in cookies:
        first = raw.split(b";", 1)[0].strip()
        name, _, value = first.partition(b"=")
        if name == b"session" and value:
            return value.decode()
    raise SetupError(f"no session cookie in {cookies!r}")


# --------------------------------------------------------------------------------------------
# WebSocket


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client frame (FIN, masked with a zero key: the payload goes out as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class WSConn(asyncio.Protocol):
    """One graphql-transport-ws socket with one subscription (operation id "1")."""

    __slots__ = (
        "ack",
        "buf",
        "close_code",
        "closed",
        "cookie",
        "frag",
        "group",
        "handshake",
        "host",
        "last_seq",
        "seen",
        "sub_dead",
        "sub_ids",
        "subscribe",
        "tracker",
        "transport",
        "upgraded",
        "warm",
    )

    def __init__(self, tracker: Tracker, host: str, cookie: str | None, group: int) -> None:
        self.tracker = tracker
        self.host = host
        self.cookie = cookie
        self.group = group  # the room (index) this socket follows
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.ack: asyncio.Future[None] = loop.create_future()
        self.frag: list[bytes] | None = None
        self.last_seq = 0
        self.seen = bytearray()
        self.warm = False
        self.closed = False
        self.close_code: int | None = None
        self.subscribe: dict[str, Any] | None = None  # the subscription's payload
        self.sub_ids = 0
        self.sub_dead = False  # the server ended it (error or complete)

    def start_subscription(self, payload: dict[str, Any] | None = None) -> None:
        if payload is not None:
            self.subscribe = payload
        if self.subscribe is None:
            return
        self.sub_ids += 1
        self.sub_dead = False
        self.send_json({"id": str(self.sub_ids), "type": "subscribe", "payload": self.subscribe})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16))
        request = (
            b"GET /graphql HTTP/1.1\r\nHost: "
            + self.host.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n"
            + b"User-Agent: chat-bench\r\n"
        )
        if self.cookie:
            request += b"Cookie: session=" + self.cookie.encode() + b"\r\n"
        transport.write(request + b"\r\n")  # type: ignore[attr-defined]

    def send_json(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(ws_frame(orjson.dumps(message)))

    def data_received(self, data: bytes) -> None:  # the hot path, kept flat
        now = perf()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.handshake.done():
                    self.handshake.set_exception(
                        SetupError("WebSocket handshake refused: " + head.decode(errors="replace"))
                    )
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            self.handshake.set_result(None)
        pos = 0
        n = len(buf)
        tracker = self.tracker
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > n:
                break
            payload = bytes(buf[pos + header : end])
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x2:
                if b0 & 0x80:
                    tracker.on_message(self, payload, now)
                else:
                    self.frag = [payload]
            elif opcode == 0x0:
                if self.frag is not None:
                    self.frag.append(payload)
                    if b0 & 0x80:
                        whole = b"".join(self.frag)
                        self.frag = None
                        tracker.on_message(self, whole, now)
            elif opcode == 0x9:
                self.transport.write(ws_frame(payload, 0xA))  # type: ignore[union-attr]
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                tracker.closed_by_server += 1
                if self.close_code not in (1000, 1001, None) and len(tracker.error_samples) < 20:
                    tracker.error_samples.append(f"closed {self.close_code} {payload[2:]!r}")
                self.transport.write(ws_frame(payload[:2], 0x8))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.handshake, self.ack):
            if not future.done():
                future.set_exception(SetupError(f"socket closed ({self.close_code}): {exc!r}"))
                future.exception()  # retrieved: whoever awaits it still gets it

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()


# --------------------------------------------------------------------------------------------
# Accounting


def percentile(values: Iterable[float], q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    index = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
    return data[index]


def summarize_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99, p99.9, max of seconds, reported in milliseconds."""
    data = sorted(values)
    out: dict[str, float | int | None] = {"count": len(data)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        value = percentile(data, q) if data else None
        out[name] = round(value * 1000, 2) if value is not None else None
    out["max"] = round(data[-1] * 1000, 2) if data else None
    out["mean"] = round(sum(data) / len(data) * 1000, 2) if data else None
    return out


@dataclass
class StepStats:
    deliveries: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0
    unexpected: int = 0
    errors: int = 0
    send_errors: int = 0
    sent: int = 0
    responses: int = 0
    delivery_ms: dict[str, Any] = field(default_factory=dict)
    last_recipient_ms: dict[str, Any] = field(default_factory=dict)
    response_ms: dict[str, Any] = field(default_factory=dict)
    lag_ms: dict[str, Any] = field(default_factory=dict)
    incomplete_messages: int = 0


class Tracker:
    """Deliveries of measured messages: latency, loss, duplicates, order."""

    def __init__(self) -> None:
        self.sent_at = array("d")
        self.expected = array("i")
        self.got = array("i")
        self.last_at = array("d")
        self.failed = bytearray()
        self.k_floor = 0  # messages below belong to earlier steps
        self.latencies = array("d")
        self.response_latencies = array("d")
        self.lags = array("d")
        self.pending = 0  # expected deliveries of this step not received yet
        self.outstanding = 0  # requests of this step without a response
        self.duplicates = 0
        self.out_of_order = 0
        self.late = 0
        self.unexpected = 0
        self.errors = 0
        self.send_errors = 0
        self.responses = 0
        self.closed_by_server = 0
        self.acks = 0
        self.error_samples: list[str] = []

    # -- messages
    def begin_step(self) -> None:
        self.k_floor = len(self.sent_at)
        self.latencies = array("d")
        self.response_latencies = array("d")
        self.lags = array("d")
        self.pending = 0
        self.outstanding = 0
        self.duplicates = self.out_of_order = self.late = self.unexpected = 0
        self.errors = self.send_errors = self.responses = 0

    def new_message(self, sent_at: float, expected: int) -> int:
        k = len(self.sent_at)
        self.sent_at.append(sent_at)
        self.expected.append(expected)
        self.got.append(0)
        self.last_at.append(0.0)
        self.failed.append(0)
        self.pending += expected
        self.outstanding += 1
        return k

    def on_response(
        self, k: int, status: int, body: bytes, error: BaseException | None, now: float
    ) -> None:
        if k < self.k_floor:
            return
        self.outstanding -= 1
        if error is not None or status != 200 or b'"errors"' in body:
            self.send_errors += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"send {status} {error!r} {body[:200]!r}")
            if not self.failed[k]:
                self.failed[k] = 1
                self.pending -= self.expected[k] - self.got[k]
            return
        self.responses += 1
        self.response_latencies.append(now - self.sent_at[k])

    def on_message(self, conn: WSConn, payload: bytes, now: float) -> None:
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "next":
            body = message["payload"]
            data = body.get("data")
            if not data or body.get("errors"):
                self.errors += 1
                if len(self.error_samples) < 20:
                    self.error_samples.append(f"next {payload[:300]!r}")
                return
            for node in data.values():
                seq: int = node["seq"]
                seen = conn.seen
                if seq >= len(seen):
                    seen.extend(bytes(seq - len(seen) + 256))
                if seen[seq]:
                    self.duplicates += 1
                    continue
                seen[seq] = 1
                if seq < conn.last_seq:
                    self.out_of_order += 1
                else:
                    conn.last_seq = seq
                text: str = node["data"]
                if text[0] == "w":
                    conn.warm = True
                    continue
                try:
                    k = int(text[: text.index("|")])
                except ValueError:
                    self.unexpected += 1
                    continue
                if k >= len(self.sent_at):
                    self.unexpected += 1
                    continue
                if k < self.k_floor:
                    self.late += 1
                    continue
                if self.failed[k]:
                    self.unexpected += 1
                    continue
                self.got[k] += 1
                self.pending -= 1
                self.last_at[k] = now
                self.latencies.append(now - self.sent_at[k])
        elif kind == "connection_ack":
            self.acks += 1
            if not conn.ack.done():
                conn.ack.set_result(None)
        elif kind == "ping":
            conn.send_json({"type": "pong"})
        elif kind in ("error", "complete"):
            conn.sub_dead = True
            self.errors += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{kind} {payload[:300]!r}")

    def end_step(self) -> StepStats:
        stats = StepStats()
        lost = 0
        incomplete = 0
        last_recipient = []
        for k in range(self.k_floor, len(self.sent_at)):
            if self.failed[k]:
                continue
            missing = self.expected[k] - self.got[k]
            if missing > 0:
                lost += missing
                incomplete += 1
            elif self.expected[k]:
                last_recipient.append(self.last_at[k] - self.sent_at[k])
        stats.sent = len(self.sent_at) - self.k_floor
        stats.deliveries = len(self.latencies)
        stats.lost = lost
        stats.incomplete_messages = incomplete
        stats.duplicates = self.duplicates
        stats.out_of_order = self.out_of_order
        stats.late = self.late
        stats.unexpected = self.unexpected
        stats.errors = self.errors
        stats.send_errors = self.send_errors
        stats.responses = self.responses
        stats.delivery_ms = summarize_ms(self.latencies)
        stats.last_recipient_ms = summarize_ms(last_recipient)
        stats.response_ms = summarize_ms(self.response_latencies)
        stats.lag_ms = summarize_ms(self.lags)
        return stats


# --------------------------------------------------------------------------------------------
# Topology: users, rooms, sockets


@dataclass
class Endpoint:
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Room:
    id: str
    members: list[tuple[str, str]]  # (name, cookie)
    sockets: list[WSConn] = field(default_factory=list)
    # The activity mix's target: (seq, message id, sender index, k) of the newest message whose
    # send has answered, and how many reactions it has had from the mix.
    latest: tuple[int, str, int, int] | None = None
    latest_reactions: int = 0


@dataclass
class Mix:
    """Shares of the scheduled operations that are not sends: edits of (by its sender), and
    reactions to (by the other member), the room's newest answered message. Which operation
    each slot gets is drawn from a seeded generator, so runs repeat exactly."""

    edits: float = 0.1
    reactions: float = 0.1
    seed: int = 1

    @property
    def sends(self) -> float:
        return 1.0 - self.edits - self.reactions


class LoadGen:
    """Users, rooms and sockets on one or more servers, and the open-loop sender."""

    def __init__(self, endpoints: list[Endpoint], *, http_connections: int = 256) -> None:
        self.endpoints = endpoints
        self.pools = [HttpPool(e.host, e.port, http_connections) for e in endpoints]
        self.tracker = Tracker()
        self.rooms: list[Room] = []
        self.sockets: list[WSConn] = []
        self._rr = itertools.count()
        self.message_bytes = 100
        self.client_ids = True
        self._client_id_prefix = os.urandom(4).hex()
        self._client_ids = itertools.count(1)
        self.resubscribed = 0
        self.sender: int | None = None  # a fixed sending member (index), else alternating
        # Per kind of operation of the last open loop: count and response latencies (s).
        self.ops: dict[str, int] = {}
        self.op_latencies: dict[str, array[float]] = {}

    def pool(self) -> HttpPool:
        return self.pools[next(self._rr) % len(self.pools)]

    async def sign_up(self, names: list[str], concurrency: int = 32) -> dict[str, str]:
        """Sign each user up once; returns name -> cookie (reused by all their devices)."""
        cookies: dict[str, str] = {}
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int, name: str) -> None:
            async with semaphore:
                pool = self.pools[index % len(self.pools)]
                body, set_cookies = await pool.post(SIGN_UP, {"name": name, "password": PASSWORD})
                if body.get("errors"):
                    raise SetupError(f"signUp {name}: {body['errors']}")
                cookies[name] = session_cookie(set_cookies)

        await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
        return cookies

    async def make_direct_rooms(
        self, pairs: list[tuple[str, str]], cookies: dict[str, str], concurrency: int = 32
    ) -> list[Room]:
        semaphore = asyncio.Semaphore(concurrency)
        rooms: list[Room | None] = [None] * len(pairs)

        async def one(index: int, a: str, b: str) -> None:
            async with semaphore:
                data = await self.pools[index % len(self.pools)].data(
                    DIRECT_ROOM, {"with": b}, cookies[a]
                )
                rooms[index] = Room(
                    id=data["directRoom"]["id"], members=[(a, cookies[a]), (b, cookies[b])]
                )

        await asyncio.gather(*(one(i, a, b) for i, (a, b) in enumerate(pairs)))
        made = [room for room in rooms if room is not None]
        self.rooms.extend(made)
        return made

    async def open_socket(
        self,
        endpoint: Endpoint,
        cookie: str,
        group: int,
        subscribe: dict[str, Any] | None,
        *,
        rcvbuf: int | None = None,
        tracker: Tracker | None = None,
    ) -> WSConn:
        """A connected, acknowledged socket; rcvbuf caps its kernel receive buffer. `tracker`
        receives its frames instead of the generator's own."""
        loop = asyncio.get_running_loop()
        tracker = tracker or self.tracker
        if rcvbuf:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, (endpoint.host, endpoint.port))
            _, conn = await loop.create_connection(
                lambda: WSConn(tracker, endpoint.hostport, cookie, group), sock=sock
            )
        else:
            _, conn = await loop.create_connection(
                lambda: WSConn(tracker, endpoint.hostport, cookie, group),
                endpoint.host,
                endpoint.port,
            )
        await asyncio.wait_for(conn.handshake, 30)
        conn.send_json({"type": "connection_init", "payload": {}})
        await asyncio.wait_for(conn.ack, 30)
        if subscribe is not None:
            conn.start_subscription(subscribe)
        return conn

    async def connect_rooms(
        self,
        rooms: list[Room],
        devices_per_member: int,
        *,
        inbox: bool = False,
        concurrency: int = 64,
        progress: Callable[[int], None] | None = None,
        member_devices: list[int] | None = None,
    ) -> float:
        """Open devices_per_member sockets per member of each room (or member_devices[i] for
        member i), each subscribed; returns the seconds it took."""
        semaphore = asyncio.Semaphore(concurrency)
        started = perf()
        done = 0
        jobs = []
        for room_index, room in enumerate(self.rooms):
            if room not in rooms:
                continue
            for member_index, (_member, cookie) in enumerate(room.members):
                devices = (
                    member_devices[member_index]
                    if member_devices is not None
                    else devices_per_member
                )
                for _device in range(devices):
                    jobs.append((room_index, room, cookie))

        async def one(i: int, room_index: int, room: Room, cookie: str) -> None:
            nonlocal done
            endpoint = self.endpoints[i % len(self.endpoints)]
            subscribe = (
                {"query": INBOX, "variables": {}}
                if inbox
                else {"query": MESSAGE_ADDED, "variables": {"roomId": room.id}}
            )
            async with semaphore:
                conn = await self.open_socket(endpoint, cookie, room_index, subscribe)
            room.sockets.append(conn)
            self.sockets.append(conn)
            done += 1
            if progress is not None and done % 1000 == 0:
                progress(done)

        await asyncio.gather(*(one(i, *job) for i, job in enumerate(jobs)))
        return perf() - started

    async def connect_and_warm(
        self,
        rooms: list[Room],
        devices_per_member: int,
        *,
        inbox: bool = False,
        batch_sockets: int = 200,
        concurrency: int = 50,
        progress: Callable[[int], None] | None = None,
        member_devices: list[int] | None = None,
    ) -> tuple[float, float, int]:
        """Connect rooms batch by batch, warming each batch up before the next.

        Subscribing has no acknowledgement in graphql-transport-ws, and a burst of a thousand
        subscriptions exhausts the server's database pool (its set-up reads run after the
        connection_ack), so a batch is complete only once each of its sockets has received a
        message. Returns (connect seconds, warm-up seconds, warm-up messages).
        """
        per_room = max(
            1, sum(member_devices) if member_devices is not None else 2 * devices_per_member
        )
        step = max(1, batch_sockets // per_room)
        connect_s = warm_s = 0.0
        warm_messages = 0
        for start in range(0, len(rooms), step):
            batch = rooms[start : start + step]
            connect_s += await self.connect_rooms(
                batch,
                devices_per_member,
                inbox=inbox,
                concurrency=concurrency,
                member_devices=member_devices,
            )
            t0 = perf()
            warm_messages += await self.warm_up(batch)
            warm_s += perf() - t0
            if progress is not None:
                progress(len(self.sockets))
        return connect_s, warm_s, warm_messages

    def _send(self, room: Room, data: str, sender: int, on_done: Any) -> None:
        if self.sender is not None:
            sender = self.sender
        _name, cookie = room.members[sender % len(room.members)]
        variables: dict[str, Any] = {"roomId": room.id, "data": data}
        if self.client_ids:
            variables["clientMessageId"] = f"{self._client_id_prefix}-{next(self._client_ids)}"
        body = orjson.dumps({"query": SEND, "variables": variables})
        self.pool().request(body, cookie, on_done)

    async def warm_up(self, rooms: list[Room], limit_s: float = 60.0) -> int:
        """Send to each room until every socket of it has received one: subscriptions are live.

        Returns how many warm-up messages it took.
        """
        deadline = perf() + limit_s
        sent = 0
        waiting = [room for room in rooms if room.sockets]
        rounds = 0
        while waiting:
            rounds += 1
            failures: list[str] = []
            for index, room in enumerate(waiting):

                def done(
                    status: int, body: bytes, _c: Any, error: Any, failures: list[str] = failures
                ) -> None:
                    if error is not None or status != 200 or b'"errors"' in body:
                        failures.append(f"{status} {error!r} {body[:200]!r}")

                padding = "x" * max(0, self.message_bytes - 16)
                self._send(room, f"w{rounds}|{padding}", index, done)
                sent += 1
                if index % 200 == 199:
                    await asyncio.sleep(0.05)
            wait_until = min(deadline, perf() + 2.0 + 0.002 * len(waiting))
            while perf() < wait_until:
                await asyncio.sleep(0.05)
                if all(conn.warm for room in waiting for conn in room.sockets):
                    break
            if failures:
                raise SetupError(f"warm-up sends failed: {failures[:3]}")
            waiting = [room for room in waiting if not all(c.warm for c in room.sockets)]
            for room in waiting:
                for conn in room.sockets:
                    if conn.sub_dead and not conn.closed:
                        # The server ended the subscription (e.g. its pool timed out): again.
                        self.resubscribed += 1
                        conn.start_subscription()
            if waiting and perf() > deadline:
                cold = sum(1 for room in waiting for c in room.sockets if not c.warm)
                raise SetupError(
                    f"{cold} sockets in {len(waiting)} rooms never received a warm-up message; "
                    f"errors: {self.tracker.error_samples[:3]}"
                )
        return sent

    async def open_loop(
        self,
        rooms: list[Room],
        rate: float,
        duration: float,
        expected: Callable[[Room], int],
        mix: Mix | None = None,
    ) -> float:
        """Send `rate` messages/s for `duration` s round-robin over rooms, on schedule.

        Each message's clock starts at its scheduled instant; the request is written then
        (unless every connection is busy: the wait counts, as it would for a user).
        With `mix`, that share of the slots edits or reacts to the room's newest message instead
        (a slot whose room has none answered yet sends). Those expect no delivery.
        Returns the achieved rate (scheduled operations actually written per second).
        """
        tracker = self.tracker
        total = int(rate * duration)
        interval = 1.0 / rate
        padding = "x" * max(0, self.message_bytes - 12)
        draw = random.Random(mix.seed).random if mix is not None else None
        self.ops = {"send": 0, "edit": 0, "reaction": 0}
        self.op_latencies = {kind: array("d") for kind in self.ops}
        start = perf() + 0.02
        i = 0
        nrooms = len(rooms)
        while i < total:
            now = perf()
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < total:
                due = start + i * interval
                if due > now:
                    break
                room = rooms[i % nrooms]
                kind = "send"
                if draw is not None and mix is not None:
                    kind = self._mix_kind(room, draw(), mix)
                k = tracker.new_message(due, expected(room) if kind == "send" else 0)
                tracker.lags.append(perf() - due)
                self.ops[kind] += 1
                if kind == "send":
                    sender = i // nrooms
                    if mix is None:

                        def done(status: int, body: bytes, _c: Any, error: Any, k: int = k) -> None:
                            tracker.on_response(k, status, body, error, perf())

                        self._send(room, f"{k}|{padding}", sender, done)
                    else:
                        done_ = self._mix_done(k, room, kind, sender)
                        self._send(room, f"{k}|{padding}", sender, done_)
                else:
                    done_ = self._mix_done(k, room, kind, None)
                    self._change(room, kind, k, padding, done_)
                i += 1
        return total / max(1e-9, perf() - start)

    def _mix_kind(self, room: Room, roll: float, mix: Mix) -> str:
        if room.latest is None or roll >= mix.edits + mix.reactions:
            return "send"
        if roll < mix.edits or room.latest_reactions >= len(EMOJIS):
            return "edit"
        return "reaction"

    def _mix_done(self, k: int, room: Room, kind: str, sender: int | None) -> Any:
        """The response callback of a mix operation: accounting, and for a send the room's
        newest message (responses may come back out of order)."""
        tracker = self.tracker
        latencies = self.op_latencies[kind]

        def done(status: int, body: bytes, _c: Any, error: Any) -> None:
            now = perf()
            tracker.on_response(k, status, body, error, now)
            if error is not None or status != 200:
                return
            latencies.append(now - tracker.sent_at[k])
            if sender is None:
                return
            sent = (orjson.loads(body).get("data") or {}).get("sendMessage")
            if sent and (room.latest is None or sent["seq"] > room.latest[0]):
                member = self.sender if self.sender is not None else sender
                room.latest = (sent["seq"], sent["id"], member % len(room.members), k)
                room.latest_reactions = 0

        return done

    def _change(self, room: Room, kind: str, k: int, padding: str, on_done: Any) -> None:
        """Edit the room's newest message (as its sender) or react to it (as the other member)."""
        assert room.latest is not None
        _seq, message_id, sender, original = room.latest
        if kind == "edit":
            cookie = room.members[sender][1]
            # The original message's k still comes first: a subscriber refilled from the
            # database gets the message as it is now, and must count it as that message.
            note = f"edit {k}|"
            data = f"{original}|{note}{padding[len(note) :]}"
            variables = {"messageId": message_id, "data": data}
            body = orjson.dumps({"query": EDIT, "variables": variables})
        else:
            cookie = room.members[(sender + 1) % len(room.members)][1]
            emoji = EMOJIS[room.latest_reactions]
            room.latest_reactions += 1
            body = orjson.dumps(
                {"query": REACT, "variables": {"messageId": message_id, "emoji": emoji}}
            )
        self.pool().request(body, cookie, on_done)

    async def drain(self, limit_s: float) -> bool:
        """Wait for every expected delivery and response of this step; False on timeout."""
        deadline = perf() + limit_s
        tracker = self.tracker
        while perf() < deadline:
            if tracker.pending <= 0 and tracker.outstanding <= 0:
                return True
            await asyncio.sleep(0.01)
        return False

    def close(self) -> None:
        for conn in self.sockets:
            conn.close()
        self.sockets.clear()
        for pool in self.pools:
            pool.close()
