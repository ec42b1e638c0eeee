"""The chat web client (web/): its page at `/` and its modules at /web/, served offline."""

from __future__ import annotations

import mimetypes
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

# Plain ES modules and CSS, no build step: the folder is served as it is in the repository.
WEB_DIR: Path = Path(__file__).resolve().parent.parent / "web"

# Everything comes from this server: no inline script or style, no CDN, sockets only back to
# this origin (CSP 3 lets 'self' match ws:/wss: of the same host).
WEB_CLIENT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
    "object-src 'none'"
)

# Module scripts must come with a JavaScript type; some systems' tables miss .mjs.
mimetypes.add_type("text/javascript", ".mjs")


def available() -> bool:
    """Whether the client's files are here (a wheel install ships only the API)."""
    return (WEB_DIR / "index.html").is_file()


@cache
def _index_html() -> str:
    return (WEB_DIR / "index.html").read_text(encoding="utf-8")


async def index(request: Request) -> Response:
    """The client's page, under its strict Content-Security-Policy."""
    return HTMLResponse(
        _index_html(),
        headers={
            "Content-Security-Policy": WEB_CLIENT_CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )


def static_app() -> StaticFiles:
    """An ASGI app serving web/, to mount at /web."""
    return StaticFiles(directory=WEB_DIR, check_dir=True)
