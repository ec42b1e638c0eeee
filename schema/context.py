"""The per-request (or per-WebSocket-connection) context handed to resolvers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader
from strawberry.types import Info as StrawberryInfo

from api.chat.reads import unread_counts
from api.core.errors import BadUserInput, Unauthenticated
from api.core.tasks import Unfinished
from api.state import AppState
from api.users import service as users
from api.users.service import IssuedSession
from api.users.views import Authenticated

BEARER_PREFIX = "bearer "


def _bearer(value: object) -> str | None:
    if isinstance(value, str) and value[: len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
        return value[len(BEARER_PREFIX) :].strip() or None
    return None


@dataclass
class Context:
    """What resolvers may use: the app's state, the caller's session, the HTTP response."""

    request: Request | WebSocket
    response: Response | WebSocket
    state: AppState
    # Filled by strawberry with the connection_init payload on WebSocket connections.
    connection_params: dict[str, Any] | None = None
    # Over HTTP, the credential as the endpoint found it in the request (schema.http).
    http_credential: str | None = None
    _auth: Authenticated | None = None
    # Unread counts asked for together (a page of rooms) are read in one statement.
    _unread: Any = field(default=None, repr=False)
    _auth_checked: bool = False
    _auth_error: Unauthenticated | None = field(default=None, repr=False)

    @property
    def is_websocket(self) -> bool:
        return isinstance(self.request, WebSocket)

    @property
    def unfinished(self) -> Unfinished:
        """Where work that must not stop halfway (a send between its commit and its publish)
        runs. A WebSocket operation is cancelled when its socket closes, so such work gets a
        task of its own; an HTTP request is never cancelled mid-way (api.core.tasks.InCaller)."""
        state = self.state
        return state.unfinished if self.is_websocket else state.in_caller

    @property
    def viewer_id(self) -> uuid.UUID | None:
        """The signed-in user, once authenticated (results that depend on the viewer key on
        it)."""
        return self._auth.user.id if self._auth is not None else None

    @property
    def user_agent(self) -> str | None:
        return self.request.headers.get("user-agent")

    @property
    def client_address(self) -> str:
        """The caller's address (behind a proxy, uvicorn's --forwarded-allow-ips decides)."""
        client = self.request.client
        return client.host if client else "unknown"

    def credential(self) -> str | None:
        """The encrypted session value: cookie, `Authorization: Bearer`, or connection_init."""
        if self.http_credential is not None:
            return self.http_credential
        params = self.connection_params or {}
        from_params = _bearer(params.get("authorization") or params.get("Authorization"))
        return (
            from_params
            or _bearer(self.request.headers.get("authorization"))
            or self.request.cookies.get(self.state.settings.cookie_name)
        )

    async def auth(self) -> Authenticated | None:
        """The caller's live session, checked once per request (or per connection)."""
        if not self._auth_checked:
            value = self.credential()
            if value:
                try:
                    state = self.state
                    self._auth = await users.authenticate(
                        db=state.db,
                        keys=state.keys,
                        cookie_value=value,
                        tokens=state.tokens,
                        sessions=state.sessions,
                    )
                except Unauthenticated as error:
                    self._auth_error = error
            self._auth_checked = True
        return self._auth

    async def require_auth(self) -> Authenticated:
        """The caller's live session, or UNAUTHENTICATED."""
        auth = await self.auth()
        if auth is None:
            raise self._auth_error or Unauthenticated()
        return auth

    async def unread_count(self, room_id: uuid.UUID, read_seq: int) -> int:
        """The signed-in user's unread count in a room from a read seq; the counts asked for
        in one tick (every room of a page) take one statement between them."""
        if self._unread is None:
            # No cache: a WebSocket connection's context outlives its operations.
            self._unread = DataLoader(self._unread_counts, cache=False)
        count: int = await self._unread.load((room_id, read_seq))
        return count

    async def _unread_counts(self, keys: list[tuple[uuid.UUID, int]]) -> list[int]:
        auth = await self.require_auth()
        counts = await unread_counts(db=self.state.db, user_id=auth.user.id, read_seqs=dict(keys))
        return [counts.get(room_id, 0) for room_id, _ in keys]

    def require_http(self, action: str) -> None:
        """BAD_USER_INPUT over WebSocket for actions that must set the cookie on a response."""
        if self.is_websocket:
            raise BadUserInput(
                f"{action} must be sent over HTTP: only an HTTP response can set the session "
                "cookie."
            )

    def forget_auth(self) -> None:
        """Drop the cached session, e.g. after sign-out."""
        self._auth = None
        self._auth_checked = True

    def set_session_cookie(self, issued: IssuedSession) -> None:
        """Set the session cookie on the HTTP response (no-op over WebSocket)."""
        self._auth = Authenticated(user=issued.user, session=issued.session)
        self._auth_checked = True
        if isinstance(self.response, Response):
            settings = self.state.settings
            self.response.set_cookie(
                settings.cookie_name,
                issued.cookie_value,
                max_age=int(settings.session_ttl.total_seconds()),
                path="/",
                secure=settings.effective_cookie_secure,
                httponly=True,
                samesite="lax",
            )

    def clear_session_cookie(self) -> None:
        """Delete the session cookie, with the attributes it was set with."""
        if isinstance(self.response, Response):
            settings = self.state.settings
            self.response.delete_cookie(
                settings.cookie_name,
                path="/",
                secure=settings.effective_cookie_secure,
                httponly=True,
                samesite="lax",
            )


Info = StrawberryInfo[Context, None]
