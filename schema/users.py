"""GraphQL types and resolvers of accounts: thin controllers over api.users.service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry

from api.core.errors import BadUserInput
from api.users import service as users
from api.users.views import SessionRecord, UserView
from schema.context import Info


@strawberry.type(name="User")
class UserType:
    id: strawberry.ID
    name: str
    created_at: datetime

    @classmethod
    def from_model(cls, user: UserView) -> UserType:
        return cls(id=strawberry.ID(str(user.id)), name=user.name, created_at=user.created_at)


@strawberry.type(
    name="Session", description="A signed-in device. Each sign-in creates one; sign-out revokes it."
)
class SessionType:
    id: strawberry.ID
    created_at: datetime
    expires_at: datetime
    current: bool
    user_agent: str | None

    @classmethod
    def from_model(cls, session: SessionRecord, *, current: bool) -> SessionType:
        return cls(
            id=strawberry.ID(str(session.id)),
            created_at=session.created_at,
            expires_at=session.expires_at,
            current=current,
            user_agent=session.user_agent,
        )


@strawberry.type
class AuthPayload:
    user: UserType
    expires_at: datetime = strawberry.field(
        description="When the session cookie just set expires (3 days after issue)."
    )

    @classmethod
    def from_issued(cls, issued: users.IssuedSession) -> AuthPayload:
        return cls(user=UserType.from_model(issued.user), expires_at=issued.expires_at)


@strawberry.type
class UsersQuery:
    @strawberry.field(description="The signed-in user, or null.")
    async def me(self, info: Info) -> UserType | None:
        auth = await info.context.auth()
        return UserType.from_model(auth.user) if auth else None

    @strawberry.field(description="A user by name (compared case- and width-insensitively).")
    async def user(self, info: Info, name: str) -> UserType | None:
        await info.context.require_auth()
        state = info.context.state
        found = await users.find_user_by_name(db=state.db, name=name, directory=state.directory)
        return UserType.from_model(found) if found else None

    @strawberry.field(description="The signed-in user's active sessions (devices).")
    async def sessions(self, info: Info) -> list[SessionType]:
        auth = await info.context.require_auth()
        rows = await users.list_active_sessions(db=info.context.state.db, user_id=auth.user.id)
        return [SessionType.from_model(row, current=row.id == auth.session.id) for row in rows]


def _session_options(info: Info) -> dict[str, Any]:
    """What opening a session needs besides the credentials, from the app and the request."""
    state = info.context.state
    return {
        "db": state.db,
        "hasher": state.hasher,
        "keys": state.keys,
        "iterations": state.settings.pbkdf2_iterations,
        "ttl": state.settings.session_ttl,
        "user_agent": info.context.user_agent,
        "limiter": state.limiter,
        "address": info.context.client_address,
    }


@strawberry.type
class UsersMutation:
    @strawberry.mutation(description="Creates the account and signs in: sets the session cookie.")
    async def sign_up(self, info: Info, name: str, password: str) -> AuthPayload:
        info.context.require_http("signUp")
        issued = await users.sign_up(name=name, password=password, **_session_options(info))
        info.context.set_session_cookie(issued)
        return AuthPayload.from_issued(issued)

    @strawberry.mutation(
        description="Sets the session cookie. Same error for unknown name and wrong password."
    )
    async def sign_in(self, info: Info, name: str, password: str) -> AuthPayload:
        info.context.require_http("signIn")
        issued = await users.sign_in(name=name, password=password, **_session_options(info))
        info.context.set_session_cookie(issued)
        return AuthPayload.from_issued(issued)

    @strawberry.mutation(
        description=(
            "Revokes the current session, clears the cookie, closes its subscriptions. "
            "False when there was no valid session (the cookie is cleared anyway)."
        )
    )
    async def sign_out(self, info: Info) -> bool:
        auth = await info.context.auth()
        info.context.clear_session_cookie()
        if auth is None:
            return False
        state = info.context.state
        await users.sign_out(
            db=state.db, pubsub=state.pubsub, sessions=state.sessions, session_id=auth.session.id
        )
        info.context.forget_auth()
        return True

    @strawberry.mutation(
        description=(
            "Revokes one of the signed-in user's sessions (a lost or stolen device): its "
            "tokens stop working and its sockets close at once, on every server. Revoking "
            "the current session also clears its cookie, as signOut does."
        )
    )
    async def revoke_session(self, info: Info, id: strawberry.ID) -> bool:
        auth = await info.context.require_auth()
        try:
            session_id = uuid.UUID(str(id))
        except ValueError as error:
            raise BadUserInput("Malformed session id.") from error
        state = info.context.state
        await users.revoke_session(
            db=state.db,
            user_id=auth.user.id,
            session_id=session_id,
            pubsub=state.pubsub,
            sessions=state.sessions,
        )
        if session_id == auth.session.id:
            info.context.clear_session_cookie()
            info.context.forget_auth()
        return True

    @strawberry.mutation(
        description="Replaces the current session's token with a new one (new expiry)."
    )
    async def refresh_token(self, info: Info) -> AuthPayload:
        info.context.require_http("refreshToken")
        auth = await info.context.require_auth()
        state = info.context.state
        issued = await users.refresh_session(
            db=state.db,
            pubsub=state.pubsub,
            sessions=state.sessions,
            keys=state.keys,
            auth=auth,
            ttl=state.settings.session_ttl,
        )
        info.context.set_session_cookie(issued)
        return AuthPayload.from_issued(issued)
