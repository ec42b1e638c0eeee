"""The limit: a bare WebSocket relay under the same uvicorn, no GraphQL and no database.

It speaks just enough of the chat API for the same load generator to drive it:

* POST /graphql with a JSON body: `signUp` (sets a `session=<name>` cookie), `directRoom`
  (the room of two names), `sendMessage` (assigns the room's next seq, encodes ONE
  graphql-transport-ws `next` frame per distinct operation id and writes it to every socket
  subscribed to the room, then answers). Anything else: an empty `data`.
* WebSocket /graphql (graphql-transport-ws): connection_init -> connection_ack, subscribe
  (`messageAdded(roomId)` via variables.roomId, or `inbox` of the cookie's user) -> the socket
  joins the room's (or user's) set, complete -> leaves, ping -> pong.

What it measures is what our server cannot avoid: uvicorn's HTTP and WebSocket protocol work,
JSON decoding of the request and the writes to each socket.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from typing import Any

import orjson

NAMESPACE = uuid.UUID("0b6d3a52-4f3c-4d1a-9a59-7f4b9f0a1c22")
Send = Any


class Relay:
    def __init__(self) -> None:
        # channel -> {send callable: operation id}
        self.channels: dict[str, dict[Send, str]] = {}
        self.room_seq: dict[str, int] = {}
        self.room_members: dict[str, tuple[str, str]] = {}
        self.user_ids: dict[str, str] = {}
        self.ids = itertools.count(1)
        self.created = datetime.now(UTC).isoformat()

    def user_id(self, name: str) -> str:
        value = self.user_ids.get(name)
        if value is None:
            value = self.user_ids[name] = str(uuid.uuid5(NAMESPACE, "user:" + name))
        return value

    async def publish(self, channels: list[str], node: dict[str, Any], field: str) -> None:
        frames: dict[tuple[str, str], str] = {}
        for channel in channels:
            key_field = "inbox" if channel.startswith("user:") else field
            for send, op_id in list(self.channels.get(channel, {}).items()):
                frame = frames.get((op_id, key_field))
                if frame is None:
                    frame = frames[(op_id, key_field)] = orjson.dumps(
                        {"id": op_id, "type": "next", "payload": {"data": {key_field: node}}}
                    ).decode()
                try:
                    await send({"type": "websocket.send", "text": frame})
                except Exception:  # a socket that went away
                    self.channels.get(channel, {}).pop(send, None)

    async def http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"application/json")]
        result: dict[str, Any] = {"data": None}
        try:
            request = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            request = {}
        query = request.get("query") or ""
        variables = request.get("variables") or {}
        me = _cookie_user(scope)
        if "signUp" in query:
            name = variables["name"]
            headers.append((b"set-cookie", f"session={name}; Path=/; HttpOnly".encode()))
            result = {
                "data": {
                    "signUp": {
                        "user": {"id": self.user_id(name), "name": name, "createdAt": self.created},
                        "expiresAt": self.created,
                    }
                }
            }
        elif "directRoom" in query and me:
            other = variables["with"]
            low, high = sorted((me, other))
            pair = (low, high)
            room_id = str(uuid.uuid5(NAMESPACE, ":".join(pair)))
            self.room_members[room_id] = pair
            result = {"data": {"directRoom": {"id": room_id, "name": ", ".join(pair)}}}
        elif "sendMessage" in query and me:
            room_id = variables["roomId"]
            seq = self.room_seq[room_id] = self.room_seq.get(room_id, 0) + 1
            node = {
                "id": str(next(self.ids)),
                "roomId": room_id,
                "seq": seq,
                "type": "text",
                "data": variables["data"],
                "createdAt": datetime.now(UTC).isoformat(),
                "clientMessageId": variables.get("clientMessageId"),
                "cursor": "m" + room_id + str(seq),
                "sender": {"id": self.user_id(me), "name": me},
            }
            channels = ["room:" + room_id] + [
                "user:" + member for member in self.room_members.get(room_id, ())
            ]
            await self.publish(channels, node, "messageAdded")
            result = {"data": {"sendMessage": {"id": node["id"], "seq": seq}}}
        payload = orjson.dumps(result)
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        me = _cookie_user(scope)
        joined: dict[str, str] = {}  # op id -> channel
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept", "subprotocol": "graphql-transport-ws"})
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    continue
                request = orjson.loads(text)
                kind = request.get("type")
                if kind == "connection_init":
                    payload = request.get("payload") or {}
                    bearer = payload.get("authorization") or ""
                    if bearer.lower().startswith("bearer "):
                        me = bearer[7:].strip()
                    await send({"type": "websocket.send", "text": '{"type":"connection_ack"}'})
                elif kind == "subscribe":
                    op_id = request["id"]
                    query = request["payload"]["query"]
                    variables = request["payload"].get("variables") or {}
                    if "inbox" in query and "messageAdded" not in query:
                        channel = "user:" + (me or "")
                    else:
                        channel = "room:" + variables["roomId"]
                    self.channels.setdefault(channel, {})[send] = op_id
                    joined[op_id] = channel
                elif kind == "complete":
                    channel = joined.pop(request["id"], "")
                    self.channels.get(channel, {}).pop(send, None)
                elif kind == "ping":
                    await send({"type": "websocket.send", "text": '{"type":"pong"}'})
        finally:
            for channel in joined.values():
                members = self.channels.get(channel)
                if members is not None:
                    members.pop(send, None)
                    if not members:
                        del self.channels[channel]


def _cookie_user(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(value.decode("latin-1"))
            if "session" in cookie:
                return cookie["session"].value
    return None


relay = Relay()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "http":
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        await relay.http(scope, receive, send)
    elif kind == "websocket":
        await relay.websocket(scope, receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
