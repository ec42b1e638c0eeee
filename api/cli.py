"""The `chat-backend` command: serve, migrate, export-schema."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api.core.settings import ConfigurationError, Settings


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
        "proxy_headers": True,
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

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
