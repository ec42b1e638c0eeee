"""Tables of the accounts module: users and their sessions (one per signed-in device)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, String
from sqlmodel import Field, SQLModel

from api.core.db import UTCDateTime, utcnow


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (Index("uq_users_skeleton_key", "skeleton_key", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(sa_column=Column(String(32), nullable=False))
    # PRECIS UsernameCaseMapped (case-folded) of the name: "Alice", "alice" and its fullwidth
    # form are one account (see api.users.names).
    name_key: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    # The confusable skeleton of the name, unique: "alice" spelt with a Cyrillic a (U+0430)
    # cannot sign up beside "alice". Nullable only in the schema (the service always sets it,
    # migration 0006 filled it in), so the column could be added on SQLite without rebuilding
    # the users table.
    skeleton_key: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    password_hash: str = Field(sa_column=Column(String(255), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    # Set by `chat-backend user disable`: the account may not sign in (migration 0009).
    disabled_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )


class UserSession(SQLModel, table=True):
    __tablename__ = "user_sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    # The id of the one token currently valid for this session; refresh replaces it.
    jti: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    user_agent: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
