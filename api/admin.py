"""Operator actions behind the admin commands of `chat-backend` (api.cli): plain async
functions over the modules' services and stores, like every other service.

Sessions are revoked through the users service's own sign-out, so each revoked session is
announced on pub/sub exactly as a sign-out is: every running instance drops it from its
session cache and closes its sockets (4401) at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from api.chat import store as chat_store
from api.core.db import Database, utcnow
from api.core.errors import NotFound
from api.core.pubsub import PubSub
from api.users import service as users
from api.users import store as users_store
from api.users.views import UserView

ACTIVE_WINDOW = timedelta(hours=24)


async def _user(db: Database, name: str) -> UserView:
    user = await users.find_user_by_name(db=db, name=name)
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


async def revoke_sessions(
    *, db: Database, pubsub: PubSub | None, name: str, keep_newest: bool = False
) -> int:
    """Revoke the user's live sessions (all, or all but the newest); how many were revoked."""
    user = await _user(db, name)
    sessions = await users.list_active_sessions(db=db, user_id=user.id)
    if keep_newest:
        sessions = sessions[1:]
    for session in sessions:
        await users.sign_out(db=db, session_id=session.id, pubsub=pubsub)
    return len(sessions)


async def disable_user(*, db: Database, pubsub: PubSub | None, name: str) -> int:
    """Disable the account (sign-in is refused) and revoke every session; how many were
    revoked. Disabling first means a sign-in racing with this cannot keep a session."""
    user = await _user(db, name)
    await users_store.set_disabled(db, user_id=user.id, at=utcnow())
    return await revoke_sessions(db=db, pubsub=pubsub, name=name)


async def enable_user(*, db: Database, name: str) -> bool:
    """Let the account sign in again; False when it was not disabled."""
    user = await _user(db, name)
    return await users_store.set_disabled(db, user_id=user.id, at=None)


@dataclass(frozen=True, slots=True)
class Stats:
    """What `chat-backend stats` prints."""

    users: int
    rooms: int
    messages: int
    sessions_live: int
    sessions_active_24h: int


async def stats(*, db: Database) -> Stats:
    """Counts of users, rooms, messages, and sessions live now and in the last 24 hours."""
    now = utcnow()
    users_count = await users_store.count_users(db)
    rooms, messages = await chat_store.count_rooms_and_messages(db)
    live, recent = await users_store.count_sessions(db, live_at=now, since=now - ACTIVE_WINDOW)
    return Stats(
        users=users_count,
        rooms=rooms,
        messages=messages,
        sessions_live=live,
        sessions_active_24h=recent,
    )
