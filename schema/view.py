"""The strawberry ASGI view: builds the context, authenticates sockets, serves GraphiQL."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

from api.core.settings import Settings
from api.graphiql import graphiql_html
from api.state import AppState
from schema import build_schema
from schema.context import Context


class ChatGraphQL(GraphQL[Context, None]):
    """GraphQL over HTTP and WebSocket (graphql-transport-ws and legacy graphql-ws)."""

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        # Over WebSocket this runs once per connection, shared by every operation on it;
        # services open their own short database sessions, so nothing per-operation lives here.
        state: AppState = request.app.state.chat
        return Context(request=request, response=response, state=state)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        # No operation runs on a socket without a live session (strawberry closes with 4403).
        if await context.auth() is None:
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED"})
        return None

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(graphiql_html())


def create_view(settings: Settings) -> ChatGraphQL:
    """The view configured from settings."""
    return ChatGraphQL(
        build_schema(production=settings.is_production),
        graphql_ide="graphiql" if settings.graphiql_enabled else None,
        # Queries by GET would be simple cross-site requests (CSRF); POST with JSON only.
        allow_queries_via_get=False,
        connection_init_wait_timeout=timedelta(seconds=10),
        allowed_origins=tuple(settings.allowed_origins),
    )
