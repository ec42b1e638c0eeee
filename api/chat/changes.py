"""SQL of the changes to a room besides sending: group rooms, membership, roles, renames,
edits, deletes and reactions.

Each change runs in one transaction that first locks the room's row (on SQLite the write lock
does it), so the rules see the room as it is and nothing can interleave; every log entry takes
the room's next seq under that lock, which is the same lock a send takes, so seqs stay gap-free
and in commit order across all kinds.

A send to the room waits while the lock is held, so the lock is held briefly: a change to a
message (an edit, a delete, a reaction) is three prepared statements on PostgreSQL (lock, read
the state, write the change with its entry and the new seq), with the rules applied in between.
Membership changes are rare and run through SQLAlchemy Core.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from api.chat.constants import GROUP
from api.chat.store import (
    EVENTS,
    MEMBERS,
    MESSAGE_COLUMNS,
    MESSAGES,
    REACTION_ARRAYS,
    REACTIONS,
    ROOMS,
    EventRow,
    MessageRow,
    message_from_record,
    message_from_row,
    with_reactions,
)
from api.chat.views import DELETED, EDITED, REACTION_ADDED, REACTION_REMOVED
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
        # Written together when the change is done (flush): one statement each for all the
        # new members and all the entries of a createRoom or addMembers, however many.
        self._joined: list[dict[str, Any]] = []
        self._written = 0

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
        """Add a log entry with the room's next seq (written at `flush`); returns that seq."""
        self.last_seq += 1
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

    # --- membership -----------------------------------------------------------------------

    async def add_member(self, user_id: uuid.UUID, *, role: str, at: datetime, seq: int) -> None:
        """Add a member (written at `flush`)."""
        self._joined.append(
            {
                "room_id": self.room_id,
                "user_id": user_id,
                "role": role,
                "joined_at": at,
                "joined_seq": seq,
                # Joining counts as activity: the room shows in the new member's list.
                "last_activity_at": at,
            }
        )
        self.members[user_id] = Membership(user_id, role, at, seq)

    async def flush(self) -> None:
        """Write the new members and entries, and the room's new last seq."""
        if self._joined:
            await self.connection.execute(MEMBERS.insert().values(self._joined))
            self._joined = []
        entries = self.events[self._written :]
        if entries:
            await self.connection.execute(
                EVENTS.insert().values(
                    [
                        {
                            "room_id": e.room_id,
                            "seq": e.seq,
                            "kind": e.kind,
                            "actor_id": e.actor_id,
                            "created_at": e.created_at,
                            "message_id": e.message_id,
                            "member_id": e.member_id,
                            "detail": e.detail,
                        }
                        for e in entries
                    ]
                )
            )
            self._written = len(self.events)
        if self.last_seq != self._start_seq:
            await self.connection.execute(
                update(ROOMS).where(ROOMS.c.id == self.room_id).values(last_seq=self.last_seq)
            )
            self._start_seq = self.last_seq

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
                # NO KEY: the log's and memberships' foreign keys to the room still check.
                .with_for_update(key_share=True)
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
        await transaction.flush()


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
        await transaction.flush()
    return transaction.events


# --- changes to a message ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageState:
    """A message and its room as a change sees them, under the room's lock."""

    room_kind: str
    last_seq: int
    # The actor's role in the room; None when they are not a member.
    actor_role: str | None
    member_ids: list[uuid.UUID]
    message: MessageRow
    # The emojis the actor has on the message.
    mine: frozenset[str]


@dataclass(frozen=True, slots=True)
class MessageWrite:
    """What a change writes: an entry kind, with the new data (edits) or the emoji."""

    kind: str
    text: str | None = None


# Locks the message's room (a message never moves to another room).
_LOCK_MESSAGE_ROOM = """
SELECT id, kind, last_seq FROM rooms
WHERE id = (SELECT room_id FROM messages WHERE id = $1)
FOR NO KEY UPDATE
"""
# Read after the lock is held, so (READ COMMITTED) it sees every change committed before it.
_MESSAGE_STATE = f"""
SELECT (SELECT role FROM room_members WHERE room_id = $1 AND user_id = $2) AS actor_role,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = $1) AS member_ids,
       ARRAY(SELECT emoji FROM reactions WHERE message_id = $3 AND user_id = $2) AS mine,
       {", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))},
       {REACTION_ARRAYS.format(m="m")}
FROM messages m WHERE m.id = $3
"""
# Each write: the change, its log entry and the room's new seq, in one statement.
# Parameters: room, actor, message, at, seq (and the data or emoji).
_LOGGED = """
, logged AS (
    INSERT INTO room_events (room_id, seq, kind, actor_id, created_at, message_id, detail)
    VALUES ($1, $5, '{kind}', $2, $4, $3, {detail})
)
UPDATE rooms SET last_seq = $5 WHERE id = $1
"""
_WRITES = {
    EDITED: "WITH changed AS (UPDATE messages SET data = $6, edited_at = $4 WHERE id = $3)"
    + _LOGGED.format(kind=EDITED, detail="NULL"),
    DELETED: "WITH changed AS (UPDATE messages SET data = '', deleted_at = $4 WHERE id = $3),"
    " cleared AS (DELETE FROM reactions WHERE message_id = $3)"
    + _LOGGED.format(kind=DELETED, detail="NULL"),
    REACTION_ADDED: "WITH changed AS (INSERT INTO reactions (message_id, user_id, emoji, seq)"
    " VALUES ($3, $2, $6, $5))" + _LOGGED.format(kind=REACTION_ADDED, detail="$6"),
    REACTION_REMOVED: "WITH changed AS (DELETE FROM reactions"
    " WHERE message_id = $3 AND user_id = $2 AND emoji = $6)"
    + _LOGGED.format(kind=REACTION_REMOVED, detail="$6"),
}


def changed_message(
    message: MessageRow, write: MessageWrite, actor_id: uuid.UUID, at: datetime
) -> MessageRow:
    """The message as a write leaves it."""
    if write.kind == EDITED:
        return replace(message, data=write.text or "", edited_at=at)
    if write.kind == DELETED:
        return replace(message, data="", deleted_at=at, reactions=())
    emoji = write.text or ""
    reactions = [(e, list(users)) for e, users in message.reactions]
    if write.kind == REACTION_ADDED:
        for e, users in reactions:
            if e == emoji:
                users.append(actor_id)
                break
        else:
            reactions.append((emoji, [actor_id]))
    else:
        reactions = [
            (e, [u for u in users if not (e == emoji and u == actor_id)]) for e, users in reactions
        ]
    return replace(message, reactions=tuple((e, tuple(u)) for e, u in reactions if u))


Decide = Callable[[MessageState], MessageWrite | None]


async def change_message(
    db: Database, *, message_id: int, actor_id: uuid.UUID, at: datetime, decide: Decide
) -> tuple[MessageState, EventRow | None] | None:
    """Lock the message's room, read the state, let `decide` apply the rules (it raises, or
    returns None when nothing changes), and write the change with its log entry; None when
    there is no such message. The entry carries the message as the change left it."""
    if db.pg is not None:
        async with db.pg.connection() as connection, connection.transaction():
            room = await connection.fetchrow(_LOCK_MESSAGE_ROOM, message_id)
            if room is None:
                return None
            record = await connection.fetchrow(_MESSAGE_STATE, room["id"], actor_id, message_id)
            assert record is not None
            state = MessageState(
                room_kind=room["kind"],
                last_seq=room["last_seq"],
                actor_role=record["actor_role"],
                member_ids=list(record["member_ids"]),
                message=message_from_record(record),
                mine=frozenset(record["mine"]),
            )
            write = decide(state)
            if write is None:
                return state, None
            seq = state.last_seq + 1
            args: tuple[Any, ...] = (room["id"], actor_id, message_id, at, seq)
            if write.kind != DELETED:
                args += (write.text,)
            await connection.execute(_WRITES[write.kind], *args)
    else:
        async with db.write() as connection:
            found = await _sqlite_message_state(connection, message_id, actor_id)
            if found is None:
                return None
            state = found
            write = decide(state)
            if write is None:
                return state, None
            seq = state.last_seq + 1
            await _sqlite_write(
                connection, state=state, write=write, actor_id=actor_id, at=at, seq=seq
            )
    after = changed_message(state.message, write, actor_id, at)
    entry = EventRow(
        room_id=state.message.room_id,
        seq=seq,
        kind=write.kind,
        actor_id=actor_id,
        created_at=at,
        message_id=message_id,
        member_id=None,
        detail=write.text if write.kind in (REACTION_ADDED, REACTION_REMOVED) else None,
        message=after if write.kind == EDITED else None,
    )
    return replace(state, message=after), entry


async def _sqlite_message_state(
    connection: Any, message_id: int, actor_id: uuid.UUID
) -> MessageState | None:
    row = (await connection.execute(select(MESSAGES).where(MESSAGES.c.id == message_id))).first()
    if row is None:
        return None
    (message,) = await with_reactions(connection, [message_from_row(row)])
    room = (
        await connection.execute(
            select(ROOMS.c.kind, ROOMS.c.last_seq).where(ROOMS.c.id == message.room_id)
        )
    ).one()
    members = {
        user_id: role
        for user_id, role in (
            await connection.execute(
                select(MEMBERS.c.user_id, MEMBERS.c.role).where(
                    MEMBERS.c.room_id == message.room_id
                )
            )
        ).all()
    }
    mine = frozenset(emoji for emoji, users in message.reactions if actor_id in users)
    return MessageState(
        room_kind=room.kind,
        last_seq=room.last_seq,
        actor_role=members.get(actor_id),
        member_ids=list(members),
        message=message,
        mine=mine,
    )


async def _sqlite_write(
    connection: Any,
    *,
    state: MessageState,
    write: MessageWrite,
    actor_id: uuid.UUID,
    at: datetime,
    seq: int,
) -> None:
    message_id, room_id = state.message.id, state.message.room_id
    if write.kind == EDITED:
        await connection.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id)
            .values(data=write.text, edited_at=at)
        )
    elif write.kind == DELETED:
        await connection.execute(
            update(MESSAGES).where(MESSAGES.c.id == message_id).values(data="", deleted_at=at)
        )
        await connection.execute(delete(REACTIONS).where(REACTIONS.c.message_id == message_id))
    elif write.kind == REACTION_ADDED:
        await connection.execute(
            REACTIONS.insert().values(
                message_id=message_id, user_id=actor_id, emoji=write.text, seq=seq
            )
        )
    else:
        await connection.execute(
            delete(REACTIONS).where(
                REACTIONS.c.message_id == message_id,
                REACTIONS.c.user_id == actor_id,
                REACTIONS.c.emoji == write.text,
            )
        )
    await connection.execute(
        EVENTS.insert().values(
            room_id=room_id,
            seq=seq,
            kind=write.kind,
            actor_id=actor_id,
            created_at=at,
            message_id=message_id,
            detail=write.text if write.kind in (REACTION_ADDED, REACTION_REMOVED) else None,
        )
    )
    await connection.execute(update(ROOMS).where(ROOMS.c.id == room_id).values(last_seq=seq))
