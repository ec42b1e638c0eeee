"""The `chat-backend` command: serve, migrate, export-schema, and the admin commands (user
disable/enable, sessions revoke, stats)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from api import admin
from api.core import logs
from api.core.errors import NotFound
from api.core.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    from api.core.db import Database
    from api.core.pubsub import PubSub


def _serve(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        settings.check()
    except ConfigurationError as error:
        print(f"chat-backend: {error}", file=sys.stderr)
        return 2
    if args.workers > 1 and not settings.broadcast_url.startswith(("redis://", "rediss://")):
        print(
            "chat-backend: --workers > 1 needs BROADCAST_URL=redis://...: with in-memory "
            "pub/sub a message sent through one worker never reaches another's subscribers.",
            file=sys.stderr,
        )
        return 2
    if args.migrate or settings.uses_embedded_database:
        from api.core.db import upgrade_database

        # Once, here, rather than in each worker, where they would race.
        upgrade_database(settings.effective_database_url)
    # Workers and reload need an import string; the factory reads settings from the environment.
    os.environ["CHAT_BACKEND_RUN_MIGRATIONS"] = "0"
    with contextlib.ExitStack() as stack:
        if settings.metrics and args.workers > 1:
            stack.enter_context(_multiprocess_metrics(settings))
        _run(args, settings)
    return 0


@contextlib.contextmanager
def _multiprocess_metrics(settings: Settings) -> Iterator[None]:
    """Metrics that add up over the workers: set up before they start, and METRICS_PORT served
    once, by this supervising process."""
    from api.core import metrics
    from api.monitoring import PORT_SERVED_ENV

    with metrics.multiprocess_directory():
        if not settings.metrics_port:
            yield
            return
        stop = metrics.serve_port(settings.metrics_port, metrics.multiprocess_registry())
        os.environ[PORT_SERVED_ENV] = "1"
        try:
            yield
        finally:
            os.environ.pop(PORT_SERVED_ENV, None)
            stop()


def _run(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "api.cli:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        reload=args.reload,
        log_level=args.log_level,
        # The process's one logging setup (text or JSON), in every worker too; --log-level
        # warning also silences the access log.
        log_config=logs.dict_config(settings.log_format, level=args.log_level),
        **uvicorn_options(settings),
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server options that follow from settings (shared by `serve` and the test servers)."""
    from api.core.http import ChatHttpProtocol
    from api.core.websocket import ChatWebSocketProtocol

    return {
        "loop": "auto",  # uvloop when installed
        # uvicorn's httptools protocol, one write per short response.
        "http": ChatHttpProtocol,
        # uvicorn's sans-I/O protocol, opened up for the delivery hub's direct writes.
        "ws": ChatWebSocketProtocol,
        "lifespan": "on",
        # The access log is the app's (schema.access): a line per GraphQL operation, with
        # its type, name, outcome and user, where uvicorn's says `POST /graphql 200` (and
        # would print a GraphiQL share link's query string).
        "access_log": False,
        "proxy_headers": True,
        # No `server: uvicorn` on every response: it tells a scanner what to try, and costs a
        # header per response. (The Date header HTTP/1.1 asks for stays.)
        "server_header": False,
        "ws_max_size": settings.ws_max_message_bytes or 16 * 1024 * 1024,
        # Off by default: deflate costs about 50 KiB of memory per socket.
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        # strawberry never pings on graphql-transport-ws; uvicorn's pings find dead peers.
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        # On SIGTERM: stop accepting, close sockets with 1012, let in-flight requests finish.
        "timeout_graceful_shutdown": 30,
    }


def app_factory() -> object:
    """Build the app for uvicorn (used by `serve`, also with workers and reload)."""
    from api.app import create_app

    flag = os.environ.get("CHAT_BACKEND_RUN_MIGRATIONS", "")
    return create_app(run_migrations=None if flag == "" else flag == "1")


def _migrate(_: argparse.Namespace) -> int:
    from api.core.db import upgrade_database

    settings = Settings()
    upgrade_database(settings.effective_database_url)
    print("database is at the latest migration")
    return 0


def _export_schema(args: argparse.Namespace) -> int:
    from schema import schema

    text = schema.as_str() + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


def _log_format() -> logs.LogFormat:
    try:
        return Settings().log_format
    except ValidationError:
        # The command itself reports the bad setting; its words should be readable.
        return "text"


def _admin(command: Callable[[Database, PubSub], Awaitable[int]], *, tells: bool = False) -> int:
    """Run an admin command against DATABASE_URL, reaching running instances through
    BROADCAST_URL (when it `tells` them something); a NotFound is a message and exit status 1."""
    from api.core.db import Database
    from api.core.pubsub import PubSub

    settings = Settings()
    if tells and not settings.broadcast_url.startswith(("redis://", "rediss://")):
        print(
            "chat-backend: BROADCAST_URL is not Redis, so running servers are not told: they "
            "see the change within SESSION_CACHE_TTL (requests) and a third of "
            "SESSION_VERIFY_TIMEOUT (sockets).",
            file=sys.stderr,
        )

    async def run() -> int:
        db = Database(settings.effective_database_url, pool_size=2)
        await db.start()
        pubsub = PubSub(settings.broadcast_url)
        await pubsub.connect()
        try:
            return await command(db, pubsub)
        except NotFound as error:
            print(f"chat-backend: {error.message}", file=sys.stderr)
            return 1
        finally:
            await pubsub.disconnect()
            await db.dispose()

    return asyncio.run(run())


def _user_disable(args: argparse.Namespace) -> int:
    async def command(db: Database, pubsub: PubSub) -> int:
        revoked = await admin.disable_user(db=db, pubsub=pubsub, name=args.name)
        print(f"disabled {args.name}; revoked {revoked} session(s)")
        return 0

    return _admin(command, tells=True)


def _user_enable(args: argparse.Namespace) -> int:
    async def command(db: Database, pubsub: PubSub) -> int:
        changed = await admin.enable_user(db=db, name=args.name)
        print(f"enabled {args.name}" if changed else f"{args.name} was not disabled")
        return 0

    return _admin(command)


def _sessions_revoke(args: argparse.Namespace) -> int:
    async def command(db: Database, pubsub: PubSub) -> int:
        revoked = await admin.revoke_sessions(
            db=db, pubsub=pubsub, name=args.user, keep_newest=args.all_but_newest
        )
        kept = " (kept the newest)" if args.all_but_newest else ""
        print(f"revoked {revoked} session(s) of {args.user}{kept}")
        return 0

    return _admin(command, tells=True)


def _stats(args: argparse.Namespace) -> int:
    async def command(db: Database, pubsub: PubSub) -> int:
        counts = dataclasses.asdict(await admin.stats(db=db))
        if args.json:
            print(json.dumps(counts))
        else:
            for name, value in counts.items():
                print(f"{name}: {value}")
        return 0

    return _admin(command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = argparse.ArgumentParser(prog="chat-backend", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="apply pending migrations (alembic upgrade head)")
    migrate.set_defaults(handler=_migrate)

    export = commands.add_parser("export-schema", help="write the GraphQL SDL")
    export.add_argument("output", nargs="?", default="schema.graphql")
    export.set_defaults(handler=_export_schema)

    user = commands.add_parser("user", help="disable or enable an account")
    user_actions = user.add_subparsers(dest="action", required=True)
    disable = user_actions.add_parser(
        "disable", help="refuse sign-in and revoke every session (sockets close with 4401)"
    )
    disable.add_argument("name")
    disable.set_defaults(handler=_user_disable)
    enable = user_actions.add_parser("enable", help="let a disabled account sign in again")
    enable.add_argument("name")
    enable.set_defaults(handler=_user_enable)

    sessions = commands.add_parser("sessions", help="revoke sessions (a stolen device)")
    session_actions = sessions.add_subparsers(dest="action", required=True)
    revoke = session_actions.add_parser("revoke", help="revoke a user's sessions")
    revoke.add_argument("--user", required=True, metavar="NAME")
    revoke.add_argument(
        "--all-but-newest", action="store_true", help="keep the most recently signed-in one"
    )
    revoke.set_defaults(handler=_sessions_revoke)

    stats = commands.add_parser(
        "stats", help="users, rooms, messages, and sessions live now and in the last 24 h"
    )
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(handler=_stats)

    args = parser.parse_args(argv)
    logs.configure(_log_format())
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
