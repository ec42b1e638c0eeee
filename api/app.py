"""The ASGI application: routes, lifespan (database, pub/sub), health."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api import webclient
from api.chat.reads import ReadPositions
from api.chat.signals import Signals
from api.core.collector import CollectorPolicy
from api.core.db import Database, migrate
from api.core.pubsub import PubSub
from api.core.ratelimit import Limits, RateLimiter, create_storage
from api.core.security import derive_keys
from api.core.settings import Settings
from api.core.tasks import InCaller, Unfinished
from api.graphiql import static_app
from api.middleware import BodyLimitMiddleware, GraphQLRequestGuardMiddleware
from api.monitoring import Monitoring, metrics_endpoint, websocket_protocol
from api.state import AppState
from api.users import service as users
from api.users import sessions as user_sessions
from api.users.cache import SessionCache, TokenCache, UserDirectory
from api.users.passwords import PasswordHasher

log = logging.getLogger(__name__)


async def healthz(request: Request) -> Response:
    """200 when the database answers, 503 otherwise."""
    state: AppState = request.app.state.chat
    if await state.db.ping():
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)


async def root(request: Request) -> Response:
    return RedirectResponse("/graphql")


class ChatApp(Starlette):
    """The Starlette app, with POST /graphql (every query and mutation) sent straight to its
    endpoint: middleware, routing and exception layers cost more than a hot request can spare,
    and the endpoint applies the same guards and answers every failure itself.

    WebSockets on /graphql go straight to the view too: no middleware acts on a WebSocket
    (each passes it through), and each layer's coroutine frame would otherwise stay alive as
    long as the socket, about 3 KiB per socket.
    """

    graphql_post: ASGIApp | None = None
    graphql_ws: ASGIApp | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Open WebSockets by protocol (for /metrics): counted here, where every one passes.
        self.websockets: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == "/graphql":
            kind = scope["type"]
            if self.graphql_post is not None and kind == "http" and scope["method"] == "POST":
                scope["app"] = self
                await self.graphql_post(scope, receive, send)
                return
            if self.graphql_ws is not None and kind == "websocket":
                scope["app"] = self
                protocol = websocket_protocol(scope.get("subprotocols") or [])
                self.websockets[protocol] += 1
                try:
                    await self.graphql_ws(scope, receive, send)
                finally:
                    self.websockets[protocol] -= 1
                return
        await super().__call__(scope, receive, send)


def _build_state(
    settings: Settings,
    view: Any,
    *,
    db: Database,
    pubsub: PubSub,
    limiter: RateLimiter,
    app: Starlette,
) -> AppState:
    """The app's caches, hub and the rest, around its database and pub/sub."""
    from schema import document_rules
    from schema.chat import SharedMessageTypes
    from schema.documents import Documents
    from schema.execution import Plans
    from schema.hub import Hub
    from schema.log import event_type
    from schema.signals import signal_type

    keys = derive_keys(settings.secret)
    state = AppState(
        settings=settings,
        keys=keys,
        db=db,
        pubsub=pubsub,
        limiter=limiter,
        hasher=PasswordHasher(pepper=keys.pepper),
        tokens=TokenCache(),
        sessions=SessionCache(ttl=settings.session_cache_ttl),
        directory=UserDirectory(),
        unfinished=Unfinished(),
        in_caller=InCaller(),
        session_registry=user_sessions.SessionRegistry(
            db=db, pubsub=pubsub, verify_for=settings.session_verify_timeout
        ),
        reads=ReadPositions(db),
        signals=Signals(db=db, pubsub=pubsub, presence_ttl=settings.presence_timeout),
    )
    state.documents = Documents(
        view.schema._schema,
        rules=document_rules(
            production=settings.is_production,
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
        ),
        max_tokens=settings.max_query_tokens,
        hide_suggestions=settings.is_production,
    )
    state.plans = Plans()
    state.hub = Hub(
        schema=view.schema._schema,
        documents=state.documents,
        plans=state.plans,
        db=db,
        pubsub=pubsub,
        directory=state.directory,
        to_message=SharedMessageTypes(),
        to_event=event_type,
        to_signal=signal_type,
        signals=state.signals,
        behind_limit=settings.ws_behind_limit,
    )
    if settings.metrics:
        websockets = app.websockets if isinstance(app, ChatApp) else collections.Counter()
        state.monitoring = Monitoring(state, websockets)
    return state


def _log_effective_settings(settings: Settings) -> None:
    """One line at start with every setting as it takes effect, secrets masked."""
    masked = settings.masked()
    log.info(
        "effective settings: %s",
        " ".join(f"{name}={value}" for name, value in masked.items()),
        extra={"fields": {"settings": masked}},
    )


def _start_background(state: AppState) -> list[asyncio.Task[None]]:
    """The app's background work: session notices, the session registry, the purge."""
    settings = state.settings
    return [
        asyncio.create_task(
            users.watch_session_changes(pubsub=state.pubsub, sessions=state.sessions),
            name="session-notices",
        ),
        asyncio.create_task(state.session_registry.run(), name="session-registry"),
        asyncio.create_task(
            user_sessions.purge_sessions_forever(
                db=state.db,
                pubsub=state.pubsub,
                interval=settings.session_purge_interval,
                done=state.sessions_purged,
            ),
            name="session-purge",
        ),
        # Until cancelled: the metrics' hooks and listener (api.monitoring).
        *(
            [asyncio.create_task(state.monitoring.run(), name="metrics")]
            if settings.metrics
            else []
        ),
    ]


async def _stop(state: AppState, tasks: list[asyncio.Task[None] | None]) -> None:
    """Shut down in order: what is committed gets published and written before the
    connections go away."""
    # Sends already committed are published before pub/sub goes away.
    await state.unfinished.drain()
    await state.hub.stop()
    await state.signals.stop()
    # Read positions taken but not yet written are written now.
    await state.reads.flush()
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await state.session_registry.close()
    await state.limiter.close()
    await state.pubsub.disconnect()
    await state.db.dispose()


def create_app(
    settings: Settings | None = None, *, run_migrations: bool | None = None
) -> Starlette:
    """Build the app; nothing connects until the lifespan starts.

    Migrations run at start-up on the embedded SQLite database by default; on PostgreSQL they
    are a deliberate step (`chat-backend migrate` or `serve --migrate`).
    """
    settings = settings or Settings()
    settings.check()
    if run_migrations is None:
        run_migrations = settings.uses_embedded_database

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _log_effective_settings(settings)
        url = settings.effective_database_url
        if run_migrations:
            await migrate(url)
        db = Database(url, pool_size=settings.database_pool_size)
        await db.start()
        pubsub = PubSub(settings.broadcast_url, queue_size=settings.subscriber_queue_size)
        await pubsub.connect()
        limiter = RateLimiter(
            create_storage(settings.broadcast_url, redis_pool=pubsub.redis_pool),
            Limits.from_settings(
                messages=settings.rate_limit_messages,
                sign_in=settings.rate_limit_sign_in,
                sign_in_per_address=settings.rate_limit_sign_in_per_address,
                sign_up_per_address=settings.rate_limit_sign_up_per_address,
            ),
            owns_connections=pubsub.redis_pool is None,
        )
        state = _build_state(settings, view, db=db, pubsub=pubsub, limiter=limiter, app=app)
        state.hub.start()
        await state.signals.start()
        background = _start_background(state)
        # Everything alive now (modules, schema, pools) lives as long as the process: move it
        # out of the collector's generations, so full collections scan only per-socket state.
        gc.collect()
        gc.freeze()
        collector = CollectorPolicy(
            freeze_interval=settings.gc_freeze_interval, full_interval=settings.gc_full_interval
        ).start()
        app.state.chat = state
        try:
            yield
        finally:
            await _stop(state, [*background, collector])

    # The app factory is the one place in api/ that mounts the GraphQL layer.
    from schema.access import AccessLoggedEndpoint
    from schema.http import GraphQLHTTPEndpoint
    from schema.view import create_view

    view = create_view(settings)
    endpoint = GraphQLHTTPEndpoint(
        max_body_bytes=settings.max_body_bytes, allowed_origins=settings.allowed_origins
    )
    if settings.web_client_enabled and not webclient.available():
        log.warning("WEB_CLIENT is on but %s is missing: / goes to /graphql", webclient.WEB_DIR)
    web_client = settings.web_client_enabled and webclient.available()
    routes = [
        Route("/", webclient.index if web_client else root),
        *([Mount("/web", webclient.static_app(), name="web")] if web_client else []),
        Route("/healthz", healthz),
        *([Route("/metrics", metrics_endpoint)] if settings.metrics_on_main_port else []),
        Mount("/graphql/static", static_app(), name="graphiql-static"),
        Route("/graphql", view, methods=["GET"]),
        WebSocketRoute("/graphql", view),
    ]
    middleware = [
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        Middleware(
            CORSMiddleware,
            # Only listed origins get Access-Control-Allow-Origin, echoed exactly, never "*".
            allow_origins=settings.allowed_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Authorization"],
            max_age=600,
        ),
        Middleware(GraphQLRequestGuardMiddleware, graphiql=settings.graphiql_enabled),
    ]
    app = ChatApp(routes=routes, middleware=middleware, lifespan=lifespan)
    app.graphql_post = AccessLoggedEndpoint(endpoint)
    app.graphql_ws = view
    return app
