"""Tables of the chat module: rooms, their members and their messages."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlmodel import Field, SQLModel

from api.core.db import UTCDateTime, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Room(SQLModel, table=True):
    __tablename__ = "rooms"
    __table_args__ = (
        Index("ix_rooms_last_activity", "last_activity_at", "id"),
        # One direct room per pair of users: creation is idempotent and race-free through it.
        Index("uq_rooms_direct_pair", "direct_low", "direct_high", unique=True),
    )

    # Random: a direct room's id must not be computable from its members' (public) ids.
    id: uuid.UUID = Field(primary_key=True)
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    # A group room's name; NULL for a direct room (its name is its members').
    name: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))
    # A direct room's two members, the lower id first; NULL for any other kind of room.
    direct_low: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    direct_high: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    # Highest seq handed out; the UPDATE that bumps it locks the row, so seq order is commit order.
    last_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    last_activity_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class RoomMember(SQLModel, table=True):
    __tablename__ = "room_members"
    __table_args__ = (
        Index("ix_room_members_user", "user_id", "room_id"),
        # Serves rooms(first, after): a user's rooms, most recent activity first, read in
        # index order from the cursor on, never sorted whole.
        Index(
            "ix_room_members_activity",
            "user_id",
            text("last_activity_at DESC"),
            text("room_id DESC"),
        ),
    )

    room_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True)
    )
    user_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    )
    # The room's last activity, copied to each member by the send that made it (the room list
    # is per user, so its order must be in this user's rows).
    last_activity_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    role: str = Field(
        default="MEMBER", sa_column=Column(String(16), nullable=False, server_default="MEMBER")
    )
    joined_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # The seq of the member's MemberJoined entry (0 for a direct room's members, who are there
    # from the start): an inbox starts a room it joins there, not at the room's beginning.
    joined_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    # The seq up to which the member has read (0 before the first markRead).
    read_seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


class Message(SQLModel, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        # Also the index that serves history: keyset pages walk (room_id, seq).
        UniqueConstraint("room_id", "seq", name="uq_messages_room_seq"),
        UniqueConstraint(
            "room_id", "sender_id", "client_message_id", name="uq_messages_room_sender_client_id"
        ),
    )

    id: int | None = Field(
        default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True)
    )
    room_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("rooms.id", ondelete="CASCADE"), nullable=False)
    )
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # RESTRICT: deleting a user must never erase their half of other people's conversations
    # (and leave gaps in the rooms' seqs).
    sender_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=False, index=True)
    )
    type: str = Field(sa_column=Column(String(32), nullable=False))
    data: str = Field(sa_column=Column(Text, nullable=False))
    client_message_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    edited_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    deleted_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )


class RoomEvent(SQLModel, table=True):
    """One entry of a room's log. Every change to a room appends one with the room's next seq
    (taken from rooms.last_seq under its row lock), so seqs are gap-free and in commit order
    across all kinds, and one cursor resumes every stream."""

    __tablename__ = "room_events"

    room_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("rooms.id", ondelete="CASCADE"), primary_key=True)
    )
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    actor_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="RESTRICT"), nullable=False)
    )
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # The message of a message or reaction entry.
    message_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # The member of a membership or role entry.
    member_id: uuid.UUID | None = Field(default=None, sa_column=Column(Uuid(), nullable=True))
    # The small payload: an emoji, a role or a room name.
    detail: str | None = Field(default=None, sa_column=Column(String(100), nullable=True))


class Reaction(SQLModel, table=True):
    """One user's reaction to a message. `seq` is the log seq that added it: a message's
    reactions are listed by the first use of each emoji."""

    __tablename__ = "reactions"
    __table_args__ = (Index("ix_reactions_message_seq", "message_id", "seq"),)

    message_id: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )
    user_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    )
    emoji: str = Field(sa_column=Column(String(32), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
