"""The chat store's tables, the rows it returns, and how records become rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select

from api.chat.models import Message, Reaction, Room, RoomEvent, RoomMember

ROOMS = Room.__table__  # type: ignore[attr-defined]
MEMBERS = RoomMember.__table__  # type: ignore[attr-defined]
MESSAGES = Message.__table__  # type: ignore[attr-defined]
EVENTS = RoomEvent.__table__  # type: ignore[attr-defined]
REACTIONS = Reaction.__table__  # type: ignore[attr-defined]

# Beyond any seq, for "no upper bound" in prepared statements.
NO_SEQ_LIMIT = 2**62


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A stored message as the table holds it (the sender as an id)."""

    id: int
    room_id: uuid.UUID
    seq: int
    sender_id: uuid.UUID
    type: str
    data: str
    created_at: datetime
    client_message_id: str | None
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    # (emoji, user ids in the order they reacted), by each emoji's first use.
    reactions: tuple[tuple[str, tuple[uuid.UUID, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class EventRow:
    """A log entry as the table holds it, with its message (as it is now) where it has one."""

    room_id: uuid.UUID
    seq: int
    kind: str
    actor_id: uuid.UUID
    created_at: datetime
    message_id: int | None
    member_id: uuid.UUID | None
    detail: str | None
    message: MessageRow | None


@dataclass(frozen=True, slots=True)
class MemberRow:
    user_id: uuid.UUID
    role: str
    joined_at: datetime | None
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room stands for one user: its last seq, and whether the user is a member."""

    last_seq: int
    is_member: bool


@dataclass(frozen=True, slots=True)
class Appended:
    """The outcome of an append: the message (new, or the earlier one with the same
    clientMessageId) and the room's members; `message` is None when the sender is no member
    (`room_exists` tells NOT_FOUND from FORBIDDEN)."""

    message: MessageRow | None
    new: bool
    member_ids: list[uuid.UUID]
    room_exists: bool = True


@dataclass(frozen=True, slots=True)
class RoomRow:
    id: uuid.UUID
    kind: str
    name: str | None
    last_seq: int
    created_at: datetime
    last_activity_at: datetime | None
    members: list[MemberRow]
    last_message: MessageRow | None

    @property
    def member_ids(self) -> list[uuid.UUID]:
        return [member.user_id for member in self.members]


MESSAGE_COLUMNS = (
    "id, room_id, seq, sender_id, type, data, created_at, client_message_id, edited_at, deleted_at"
)
# The same columns of messages aliased as m.
M_MESSAGE_COLUMNS = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))
# A message's reactions as two parallel arrays in the order of their log seqs (the index
# (message_id, seq) serves it): grouped by emoji in Python, in first-use order.
REACTION_ARRAYS = """
       ARRAY(SELECT emoji FROM reactions WHERE message_id = {m}.id ORDER BY seq) AS r_emojis,
       ARRAY(SELECT user_id FROM reactions WHERE message_id = {m}.id ORDER BY seq) AS r_users
"""


def grouped(
    pairs: Sequence[tuple[str, uuid.UUID]],
) -> tuple[tuple[str, tuple[uuid.UUID, ...]], ...]:
    """(emoji, user) pairs in log order, as reactions in first-use order."""
    by_emoji: dict[str, list[uuid.UUID]] = {}
    for emoji, user_id in pairs:
        by_emoji.setdefault(emoji, []).append(user_id)
    return tuple((emoji, tuple(users)) for emoji, users in by_emoji.items())


def message_from_record(record: Any, prefix: str = "") -> MessageRow:
    """A message from a record of MESSAGE_COLUMNS (and REACTION_ARRAYS, where selected)."""
    emojis = record.get("r_emojis")
    return MessageRow(
        id=record[prefix + "id"],
        room_id=record[prefix + "room_id"],
        seq=record[prefix + "seq"],
        sender_id=record[prefix + "sender_id"],
        type=record[prefix + "type"],
        data=record[prefix + "data"],
        created_at=record[prefix + "created_at"],
        client_message_id=record[prefix + "client_message_id"],
        edited_at=record[prefix + "edited_at"],
        deleted_at=record[prefix + "deleted_at"],
        reactions=grouped(list(zip(emojis, record["r_users"], strict=True))) if emojis else (),
    )


def message_from_row(row: Any) -> MessageRow:
    return message_from_record(row._mapping)


async def with_reactions(connection: Any, rows: Sequence[MessageRow]) -> list[MessageRow]:
    """The rows with their reactions (SQLite: one more statement for all of them)."""
    if not rows:
        return list(rows)
    found: dict[int, list[tuple[str, uuid.UUID]]] = {}
    for message_id, emoji, user_id in (
        await connection.execute(
            select(REACTIONS.c.message_id, REACTIONS.c.emoji, REACTIONS.c.user_id)
            .where(REACTIONS.c.message_id.in_({row.id for row in rows}))
            .order_by(REACTIONS.c.seq)
        )
    ).all():
        found.setdefault(message_id, []).append((emoji, user_id))
    return [
        replace(row, reactions=grouped(found[row.id])) if row.id in found else row for row in rows
    ]
