"""The strawberry ASGI view: builds the context, authenticates sockets, serves GraphiQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

from api.core.settings import Settings
from api.graphiql import graphiql_html
from api.state import AppState
from schema import build_schema
from schema.context import Context
from schema.ws import LegacyWSHandler, TransportWSHandler

log = logging.getLogger(__name__)

# Close code for a socket whose session was signed out or expired (or can no longer be
# verified: the database has been unreachable for SESSION_VERIFY_TIMEOUT). In the 4400-4499
# range that graphql-ws clients treat as fatal (no blind retry): the client signs in (or
# refreshes), reconnects and resubscribes from its last cursor.
SESSION_ENDED_CLOSE_CODE = 4401
_SESSION_END = "chat.session_end"
# The user a socket counts as online (api.chat.signals), once it is authenticated.
_PRESENT = "chat.present"

# A strict policy for the GraphiQL page: everything comes from this server (fonts are data: URIs).
GRAPHIQL_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; font-src 'self' data:; "
    "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'"
)


class ChatGraphQL(GraphQL[Context, None]):
    """GraphQL over WebSocket (graphql-transport-ws and legacy graphql-ws) and the GraphiQL
    page; POST requests go to schema.http."""

    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await super().__call__(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            present = scope.get(_PRESENT)
            if present is not None:
                scope["app"].state.chat.signals.disconnected(present)
            session_end: _SessionEnd | None = scope.get(_SESSION_END)
            if session_end is not None:
                await session_end.stop()

    def encode_json(self, data: object) -> str:
        # orjson is several times faster than json on every response and socket frame; a str
        # (not bytes) keeps WebSocket frames textual, as graphql-ws clients expect.
        # (Decoding stays with json: orjson refuses lone surrogates in the body outright, and
        # the contract wants those reported as BAD_USER_INPUT on the field.)
        try:
            return orjson.dumps(data).decode()
        except orjson.JSONEncodeError:
            # A lone surrogate echoed in an error message: json escapes what orjson refuses.
            return json.dumps(data, separators=(",", ":"))

    def decode_json(self, data: str | bytes) -> object:
        # A frame nested past the interpreter's recursion limit is malformed JSON like any
        # other (the protocol handlers close with 4400), not a crash of the handler.
        try:
            return json.loads(data)
        except RecursionError as error:
            raise json.JSONDecodeError("nested too deeply", str(data)[:64], 0) from error

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        # Over WebSocket this runs once per connection, shared by every operation on it;
        # services open their own short database sessions, so nothing per-operation lives here.
        state: AppState = request.app.state.chat
        return Context(request=request, response=response, state=state)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        # No operation runs on a socket without a live session (strawberry closes with 4403).
        auth = await context.auth()
        if auth is None:
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
        websocket = context.request
        assert isinstance(websocket, WebSocket)
        # The process's session registry closes the socket when its session ends; the socket
        # costs it one small object, no task.
        session_end = _SessionEnd(context, websocket, auth.session.id)
        websocket.scope[_SESSION_END] = session_end
        context.state.session_registry.add(auth.session.id, session_end)
        # Online from its first authenticated socket on any instance to its last.
        context.state.signals.connected(auth.user)
        websocket.scope[_PRESENT] = auth.user.id
        return None

    def should_render_graphql_ide(self, request: Any) -> bool:
        # strawberry would try to run `?query=` as an operation (and refuse it: queries by GET
        # are off). A browser opening a share link wants the page, with the query filled in
        # by init.js; only POST executes anything.
        return bool(request.method == "GET" and "text/html" in request.headers.get("accept", ""))

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html(), headers={"Content-Security-Policy": GRAPHIQL_CSP})


class _SessionEnd:
    """Closes one socket with 4401 when the session registry says its session ended."""

    __slots__ = ("closing", "context", "session_id", "websocket")

    def __init__(self, context: Context, websocket: WebSocket, session_id: uuid.UUID) -> None:
        self.context = context
        self.websocket = websocket
        self.session_id = session_id
        self.closing: asyncio.Task[None] | None = None

    def __call__(self, reason: str) -> None:
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        self.context.forget_auth()
        log.info("closing socket of session %s: %s", self.session_id, reason)
        self.closing = asyncio.ensure_future(self._close(reason))

    async def _close(self, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            await self.websocket.close(code=SESSION_ENDED_CLOSE_CODE, reason=f"session {reason}")

    async def stop(self) -> None:
        """The socket ended: stop following its session."""
        self.context.state.session_registry.discard(self.session_id, self)
        if self.closing is not None:
            self.closing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.closing


def create_view(settings: Settings) -> ChatGraphQL:
    """The view configured from settings."""
    schema = build_schema(
        production=settings.is_production,
        max_depth=settings.max_query_depth,
        max_tokens=settings.max_query_tokens,
        max_aliases=settings.max_aliases,
    )
    return ChatGraphQL(
        schema,
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        # Queries by GET would be simple cross-site requests (CSRF); POST with JSON only.
        allow_queries_via_get=False,
        connection_init_wait_timeout=timedelta(seconds=settings.connection_init_timeout),
        allowed_origins=tuple(settings.allowed_origins),
        max_subscriptions_per_connection=settings.max_subscriptions_per_connection or None,
    )
