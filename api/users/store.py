"""All SQL of the accounts module: users and their sessions.

Hot statements (a request's session, user views) run as single prepared statements through
asyncpg on PostgreSQL; everything else, and every statement on SQLite, through SQLAlchemy Core.
Rows come back as the plain records of api.users.views.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from api.core.db import Database
from api.core.errors import Conflict
from api.users.models import User, UserSession
from api.users.views import Account, SessionRecord, UserView

USERS = User.__table__  # type: ignore[attr-defined]
SESSIONS = UserSession.__table__  # type: ignore[attr-defined]

_LOAD_SESSION = """
SELECT s.jti, s.created_at, s.expires_at, s.revoked_at, s.user_agent,
       u.name, u.created_at AS user_created_at
FROM user_sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = $1 AND s.user_id = $2
"""
_USERS_BY_IDS = "SELECT id, name, created_at FROM users WHERE id = ANY($1::uuid[])"
_USER_BY_KEY = "SELECT id, name, created_at FROM users WHERE name_key = $1"


def _session_record(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        user_id=row.user_id,
        jti=row.jti,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        user_agent=row.user_agent,
    )


async def load_session(
    db: Database, *, session_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[SessionRecord, UserView] | None:
    """A session with its user, or None when there is no such session of that user."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_LOAD_SESSION, session_id, user_id)
        if record is None:
            return None
        return (
            SessionRecord(
                id=session_id,
                user_id=user_id,
                jti=record["jti"],
                created_at=record["created_at"],
                expires_at=record["expires_at"],
                revoked_at=record["revoked_at"],
                user_agent=record["user_agent"],
            ),
            UserView(id=user_id, name=record["name"], created_at=record["user_created_at"]),
        )
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(SESSIONS, USERS.c.name, USERS.c.created_at.label("user_created_at"))
                .join(USERS, USERS.c.id == SESSIONS.c.user_id)
                .where(SESSIONS.c.id == session_id, SESSIONS.c.user_id == user_id)
            )
        ).first()
    if row is None:
        return None
    return _session_record(row), UserView(id=user_id, name=row.name, created_at=row.user_created_at)


async def users_by_ids(db: Database, ids: Iterable[uuid.UUID]) -> list[UserView]:
    """The users with these ids (unknown ids are left out)."""
    wanted = list(ids)
    if not wanted:
        return []
    if db.pg is not None:
        records = await db.pg.fetch(_USERS_BY_IDS, wanted)
        return [UserView(id=r["id"], name=r["name"], created_at=r["created_at"]) for r in records]
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(USERS.c.id, USERS.c.name, USERS.c.created_at).where(USERS.c.id.in_(wanted))
            )
        ).all()
    return [UserView(id=row.id, name=row.name, created_at=row.created_at) for row in rows]


async def user_by_key(db: Database, name_key: str) -> UserView | None:
    """The user whose name has this uniqueness key, or None."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_USER_BY_KEY, name_key)
        if record is None:
            return None
        return UserView(id=record["id"], name=record["name"], created_at=record["created_at"])
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(USERS.c.id, USERS.c.name, USERS.c.created_at).where(
                    USERS.c.name_key == name_key
                )
            )
        ).first()
    return UserView(id=row.id, name=row.name, created_at=row.created_at) if row else None


async def name_in_use(db: Database, *, name_key: str, skeleton_key: str) -> bool:
    """Whether a user has this name key, or a name that looks the same (skeleton)."""
    async with db.read() as connection:
        found = (
            await connection.execute(
                select(USERS.c.id)
                .where((USERS.c.name_key == name_key) | (USERS.c.skeleton_key == skeleton_key))
                .limit(1)
            )
        ).first()
    return found is not None


async def account_by_key(db: Database, name_key: str) -> Account | None:
    """The user with this name key and the stored password hash (sign-in only)."""
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(USERS.c.id, USERS.c.name, USERS.c.created_at, USERS.c.password_hash).where(
                    USERS.c.name_key == name_key
                )
            )
        ).first()
    if row is None:
        return None
    return Account(
        user=UserView(id=row.id, name=row.name, created_at=row.created_at),
        password_hash=row.password_hash,
    )


def _session_values(session: SessionRecord) -> dict[str, Any]:
    return {
        "id": session.id,
        "user_id": session.user_id,
        "jti": session.jti,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "revoked_at": session.revoked_at,
        "user_agent": session.user_agent,
    }


async def create_user(
    db: Database,
    *,
    user: UserView,
    name_key: str,
    skeleton_key: str,
    password_hash: str,
    session: SessionRecord,
) -> None:
    """Insert a user and its first session in one transaction; CONFLICT when the name (or one
    that looks the same) is taken: the unique indexes decide between racing sign-ups."""
    try:
        async with db.write() as connection:
            await connection.execute(
                USERS.insert().values(
                    id=user.id,
                    name=user.name,
                    name_key=name_key,
                    skeleton_key=skeleton_key,
                    password_hash=password_hash,
                    created_at=user.created_at,
                )
            )
            await connection.execute(SESSIONS.insert().values(**_session_values(session)))
    except IntegrityError as error:
        raise Conflict("That name is taken, or looks too much like one that is.") from error


async def add_session(
    db: Database, *, session: SessionRecord, new_password_hash: str | None = None
) -> bool:
    """Store a new session, and the upgraded password hash if there is one; False (and nothing
    stored) when the account is disabled."""
    async with db.write() as connection:
        # FOR SHARE on PostgreSQL: a concurrent disable waits for this transaction, then revokes
        # the session it adds (SQLite runs one writer at a time anyway).
        enabled = (
            await connection.execute(
                select(USERS.c.id)
                .where(USERS.c.id == session.user_id, USERS.c.disabled_at.is_(None))
                .with_for_update(read=True)
            )
        ).first()
        if enabled is None:
            return False
        if new_password_hash is not None:
            await connection.execute(
                update(USERS)
                .where(USERS.c.id == session.user_id)
                .values(password_hash=new_password_hash)
            )
        await connection.execute(SESSIONS.insert().values(**_session_values(session)))
    return True


async def revoke_session(db: Database, *, session_id: uuid.UUID, at: datetime) -> None:
    """Mark a session revoked (no-op when it already is)."""
    async with db.write() as connection:
        await connection.execute(
            update(SESSIONS)
            .where(SESSIONS.c.id == session_id, SESSIONS.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )


async def replace_token(
    db: Database, *, session_id: uuid.UUID, old_jti: str, new_jti: str, expires_at: datetime
) -> SessionRecord | None:
    """Give a live session a new token id and expiry; None when a concurrent refresh or
    sign-out got there first."""
    async with db.write() as connection:
        result = await connection.execute(
            update(SESSIONS)
            .where(
                SESSIONS.c.id == session_id,
                SESSIONS.c.jti == old_jti,
                SESSIONS.c.revoked_at.is_(None),
            )
            .values(jti=new_jti, expires_at=expires_at)
        )
        if result.rowcount != 1:
            return None
        row = (await connection.execute(select(SESSIONS).where(SESSIONS.c.id == session_id))).one()
    return _session_record(row)


async def active_sessions(
    db: Database, *, user_id: uuid.UUID, now: datetime
) -> Sequence[SessionRecord]:
    """The user's sessions that are neither revoked nor expired, newest first."""
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(SESSIONS)
                .where(
                    SESSIONS.c.user_id == user_id,
                    SESSIONS.c.revoked_at.is_(None),
                    SESSIONS.c.expires_at > now,
                )
                .order_by(SESSIONS.c.created_at.desc())
            )
        ).all()
    return [_session_record(row) for row in rows]


async def session_deadline(db: Database, *, session_id: uuid.UUID) -> datetime | None:
    """When the session ends: its expiry, or None when it is revoked or gone."""
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(SESSIONS.c.expires_at, SESSIONS.c.revoked_at).where(
                    SESSIONS.c.id == session_id
                )
            )
        ).first()
    if row is None or row.revoked_at is not None:
        return None
    expires_at: datetime = row.expires_at
    return expires_at


_LIVE_DEADLINES = """
SELECT id, expires_at FROM user_sessions WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL
"""


async def session_deadlines(
    db: Database, *, session_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, datetime]:
    """The expiry of each of these sessions that is not revoked (revoked or gone: absent)."""
    if not session_ids:
        return {}
    if db.pg is not None:
        records = await db.pg.fetch(_LIVE_DEADLINES, list(session_ids))
        return {record["id"]: record["expires_at"] for record in records}
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(SESSIONS.c.id, SESSIONS.c.expires_at).where(
                    SESSIONS.c.id.in_(list(session_ids)), SESSIONS.c.revoked_at.is_(None)
                )
            )
        ).all()
    return {row.id: row.expires_at for row in rows}


async def delete_ended_sessions(db: Database, *, now: datetime) -> list[uuid.UUID]:
    """Delete every revoked or expired session; their ids."""
    async with db.write() as connection:
        rows = (
            await connection.execute(
                SESSIONS.delete()
                .where(SESSIONS.c.revoked_at.is_not(None) | (SESSIONS.c.expires_at <= now))
                .returning(SESSIONS.c.id)
            )
        ).all()
    return [row.id for row in rows]


async def set_disabled(db: Database, *, user_id: uuid.UUID, at: datetime | None) -> bool:
    """Disable the account from `at` on (None: enable it); whether anything changed."""
    already = USERS.c.disabled_at.is_(None) if at is not None else USERS.c.disabled_at.is_not(None)
    async with db.write() as connection:
        result = await connection.execute(
            update(USERS).where(USERS.c.id == user_id, already).values(disabled_at=at)
        )
    return bool(result.rowcount)


async def is_disabled(db: Database, *, user_id: uuid.UUID) -> bool:
    """Whether the account is disabled."""
    async with db.read() as connection:
        row = (
            await connection.execute(select(USERS.c.disabled_at).where(USERS.c.id == user_id))
        ).first()
    return row is not None and row.disabled_at is not None


async def count_users(db: Database) -> int:
    """How many accounts there are."""
    async with db.read() as connection:
        return int((await connection.execute(select(func.count()).select_from(USERS))).scalar_one())


async def count_sessions(db: Database, *, live_at: datetime, since: datetime) -> tuple[int, int]:
    """Sessions live at `live_at`, and sessions live at some moment since `since` (of those
    not yet purged)."""
    live = (SESSIONS.c.revoked_at.is_(None)) & (SESSIONS.c.expires_at > live_at)
    recent = (SESSIONS.c.revoked_at.is_(None) | (SESSIONS.c.revoked_at > since)) & (
        SESSIONS.c.expires_at > since
    )
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(
                    func.count().filter(live).label("live"),
                    func.count().filter(recent).label("recent"),
                ).select_from(SESSIONS)
            )
        ).one()
    return int(row.live), int(row.recent)
