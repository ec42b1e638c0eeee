"""SQL of the changes to a room besides sending: group rooms, membership, roles, renames,
edits, deletes and reactions.

Each change runs in one transaction that first locks the room's row (on SQLite the write lock
does it), so the rules see the room as it is and nothing can interleave; every log entry takes
the room's next seq under that lock, which is the same lock a send takes, so seqs stay gap-free
and in commit order across all kinds. These are cold paths: SQLAlchemy Core, on both databases.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update

from api.chat.constants import GROUP
from api.chat.store import (
    EVENTS,
    MEMBERS,
    MESSAGES,
    REACTIONS,
    ROOMS,
    EventRow,
    MessageRow,
    _message_from_row,
    with_reactions,
)
from api.core.db import Database


@dataclass(slots=True)
class Membership:
    """A member as the transaction sees them."""

    user_id: uuid.UUID
    role: str
    joined_at: datetime | None
    joined_seq: int


class RoomTransaction:
    """One room, locked for one change. `append` gives each log entry the next seq."""

    def __init__(
        self,
        connection: Any,
        *,
        room_id: uuid.UUID,
        kind: str,
        name: str | None,
        last_seq: int,
        members: dict[uuid.UUID, Membership],
    ) -> None:
        self.connection = connection
        self.room_id = room_id
        self.kind = kind
        self.name = name
        self.last_seq = last_seq
        self.members = members
        self.events: list[EventRow] = []
        self._start_seq = last_seq

    @property
    def is_group(self) -> bool:
        return self.kind == GROUP

    async def append(
        self,
        kind: str,
        *,
        actor_id: uuid.UUID,
        at: datetime,
        message_id: int | None = None,
        member_id: uuid.UUID | None = None,
        detail: str | None = None,
        message: MessageRow | None = None,
    ) -> int:
        """Add a log entry with the room's next seq; returns that seq."""
        self.last_seq += 1
        await self.connection.execute(
            EVENTS.insert().values(
                room_id=self.room_id,
                seq=self.last_seq,
                kind=kind,
                actor_id=actor_id,
                created_at=at,
                message_id=message_id,
                member_id=member_id,
                detail=detail,
            )
        )
        self.events.append(
            EventRow(
                room_id=self.room_id,
                seq=self.last_seq,
                kind=kind,
                actor_id=actor_id,
                created_at=at,
                message_id=message_id,
                member_id=member_id,
                detail=detail,
                message=message,
            )
        )
        return self.last_seq

    def attach_message(self, seq: int, message: MessageRow) -> None:
        """Give an entry appended before its message changed the message as it is now."""
        self.events = [replace(e, message=message) if e.seq == seq else e for e in self.events]

    # --- membership -----------------------------------------------------------------------

    async def add_member(self, user_id: uuid.UUID, *, role: str, at: datetime, seq: int) -> None:
        await self.connection.execute(
            MEMBERS.insert().values(
                room_id=self.room_id,
                user_id=user_id,
                role=role,
                joined_at=at,
                joined_seq=seq,
                # Joining counts as activity: the room shows in the new member's list.
                last_activity_at=at,
            )
        )
        self.members[user_id] = Membership(user_id, role, at, seq)

    async def remove_member(self, user_id: uuid.UUID) -> None:
        await self.connection.execute(
            delete(MEMBERS).where(MEMBERS.c.room_id == self.room_id, MEMBERS.c.user_id == user_id)
        )
        self.members.pop(user_id, None)

    async def set_role(self, user_id: uuid.UUID, role: str) -> None:
        await self.connection.execute(
            update(MEMBERS)
            .where(MEMBERS.c.room_id == self.room_id, MEMBERS.c.user_id == user_id)
            .values(role=role)
        )
        self.members[user_id].role = role

    async def rename(self, name: str) -> None:
        await self.connection.execute(
            update(ROOMS).where(ROOMS.c.id == self.room_id).values(name=name)
        )
        self.name = name

    # --- messages -------------------------------------------------------------------------

    async def message(self, message_id: int) -> MessageRow | None:
        """A message of this room as it is now, with its reactions."""
        row = (
            await self.connection.execute(
                select(MESSAGES).where(
                    MESSAGES.c.id == message_id, MESSAGES.c.room_id == self.room_id
                )
            )
        ).first()
        if row is None:
            return None
        (message,) = await with_reactions(self.connection, [_message_from_row(row)])
        return message

    async def edit(self, message_id: int, *, data: str, at: datetime) -> None:
        await self.connection.execute(
            update(MESSAGES).where(MESSAGES.c.id == message_id).values(data=data, edited_at=at)
        )

    async def delete(self, message_id: int, *, at: datetime) -> None:
        """Leave a tombstone: no data, no reactions."""
        await self.connection.execute(
            update(MESSAGES).where(MESSAGES.c.id == message_id).values(data="", deleted_at=at)
        )
        await self.connection.execute(delete(REACTIONS).where(REACTIONS.c.message_id == message_id))

    async def reactions_by(self, message_id: int, user_id: uuid.UUID) -> set[str]:
        """The emojis a user has on a message."""
        rows = await self.connection.execute(
            select(REACTIONS.c.emoji).where(
                REACTIONS.c.message_id == message_id, REACTIONS.c.user_id == user_id
            )
        )
        return set(rows.scalars())

    async def add_reaction(
        self, message_id: int, *, user_id: uuid.UUID, emoji: str, seq: int
    ) -> None:
        await self.connection.execute(
            REACTIONS.insert().values(message_id=message_id, user_id=user_id, emoji=emoji, seq=seq)
        )

    async def remove_reaction(self, message_id: int, *, user_id: uuid.UUID, emoji: str) -> None:
        await self.connection.execute(
            delete(REACTIONS).where(
                REACTIONS.c.message_id == message_id,
                REACTIONS.c.user_id == user_id,
                REACTIONS.c.emoji == emoji,
            )
        )


async def _members(connection: Any, room_id: uuid.UUID) -> dict[uuid.UUID, Membership]:
    rows = await connection.execute(
        select(MEMBERS.c.user_id, MEMBERS.c.role, MEMBERS.c.joined_at, MEMBERS.c.joined_seq)
        .where(MEMBERS.c.room_id == room_id)
        .order_by(MEMBERS.c.joined_seq, MEMBERS.c.joined_at, MEMBERS.c.user_id)
    )
    return {row.user_id: Membership(*row) for row in rows.all()}


@asynccontextmanager
async def room_transaction(
    db: Database, *, room_id: uuid.UUID
) -> AsyncIterator[RoomTransaction | None]:
    """The room locked for one change (None when there is no such room). The change commits
    when the block ends without an error."""
    async with db.write() as connection:
        row = (
            await connection.execute(
                select(ROOMS.c.kind, ROOMS.c.name, ROOMS.c.last_seq)
                .where(ROOMS.c.id == room_id)
                .with_for_update()
            )
        ).first()
        if row is None:
            yield None
            return
        transaction = RoomTransaction(
            connection,
            room_id=room_id,
            kind=row.kind,
            name=row.name,
            last_seq=row.last_seq,
            members=await _members(connection, room_id),
        )
        yield transaction
        if transaction.last_seq != transaction._start_seq:
            await connection.execute(
                update(ROOMS).where(ROOMS.c.id == room_id).values(last_seq=transaction.last_seq)
            )


async def create_group(
    db: Database,
    *,
    room_id: uuid.UUID,
    name: str,
    owner_id: uuid.UUID,
    member_ids: Iterable[uuid.UUID],
    owner_role: str,
    member_role: str,
    joined_kind: str,
    at: datetime,
) -> list[EventRow]:
    """A new group room: the owner and the members, each with a MemberJoined entry (the
    owner's first); returns the entries."""
    async with db.write() as connection:
        await connection.execute(
            ROOMS.insert().values(
                id=room_id, kind=GROUP, name=name, last_seq=0, created_at=at, last_activity_at=at
            )
        )
        transaction = RoomTransaction(
            connection, room_id=room_id, kind=GROUP, name=name, last_seq=0, members={}
        )
        for user_id, role in [(owner_id, owner_role), *((m, member_role) for m in member_ids)]:
            seq = await transaction.append(
                joined_kind, actor_id=owner_id, at=at, member_id=user_id, detail=role
            )
            await transaction.add_member(user_id, role=role, at=at, seq=seq)
        await connection.execute(
            update(ROOMS).where(ROOMS.c.id == room_id).values(last_seq=transaction.last_seq)
        )
    return transaction.events


async def message_room(db: Database, *, message_id: int) -> uuid.UUID | None:
    """The room of a message, or None."""
    async with db.read() as connection:
        found: uuid.UUID | None = (
            await connection.execute(select(MESSAGES.c.room_id).where(MESSAGES.c.id == message_id))
        ).scalar()
    return found


async def count_members(connection: Any, room_id: uuid.UUID) -> int:
    return int(
        (
            await connection.execute(
                select(func.count()).select_from(MEMBERS).where(MEMBERS.c.room_id == room_id)
            )
        ).scalar_one()
    )
