"""Offline GraphiQL: the IDE page and its vendored assets, served by this backend."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.staticfiles import StaticFiles

# Filled by scripts/vendor_graphiql.py (pinned npm releases) plus our own
# index.html/init.js; shipped as package data so it works from a wheel too.
GRAPHIQL_DIR: Path = Path(__file__).resolve().parent / "static" / "graphiql"


@cache
def graphiql_html() -> str:
    """Return the GraphiQL page HTML, read from disk once."""
    return (GRAPHIQL_DIR / "index.html").read_text(encoding="utf-8")


def static_app() -> StaticFiles:
    """Return an ASGI app serving GRAPHIQL_DIR, to mount at /graphql/static."""
    # check_dir fails fast at startup if the vendored folder was not shipped.
    return StaticFiles(directory=GRAPHIQL_DIR, check_dir=True)
