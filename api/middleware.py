"""HTTP guards in front of GraphQL: body size and content type (CSRF), as plain ASGI."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What a browser can send cross-site without a preflight ("simple" requests) must not reach
# GraphQL: only JSON bodies do, and a cross-site JSON POST needs a CORS preflight.
JSON_TYPES = ("application/json", "application/graphql-response+json")


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over a size with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.max_bytes:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            # A chunked body without Content-Length crossed the limit while being read.
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse(
            f"Request body too large (limit {self.max_bytes} bytes).", status_code=413
        )
        await response(scope, receive, send)


class GraphQLRequestGuardMiddleware:
    """Operations only by POST with JSON: form, text and multipart bodies (415) and GET (405)
    are what a cross-site page can send without a CORS preflight.

    A GET that asks for HTML still gets GraphiQL when it is enabled.
    """

    def __init__(self, app: ASGIApp, *, path: str = "/graphql", graphiql: bool = True) -> None:
        self.app = app
        self.path = path
        self.graphiql = graphiql

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if scope["method"] in ("GET", "HEAD"):
            # Share links (`/graphql?query=...`, as GraphiQL's share button and many tutorials
            # make them) open the page with the query filled in; a GET never executes it.
            wants_page = "text/html" in headers.get("accept", "")
            if not (self.graphiql and wants_page):
                response = PlainTextResponse(
                    "GraphQL operations are sent by POST with Content-Type: application/json.",
                    status_code=405,
                    headers={"Allow": "POST"},
                )
                await response(scope, receive, send)
                return
        elif scope["method"] == "POST":
            content_type = headers.get("content-type", "")
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type not in JSON_TYPES:
                response = PlainTextResponse(
                    "POST /graphql needs Content-Type: application/json.", status_code=415
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
