"""Sending, direct rooms and membership positions: the hot single statements."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from sqlalchemy import select, update
from sqlalchemy.dialects import sqlite

from api.chat.constants import DIRECT, MEMBER
from api.chat.store.rows import (
    EVENTS,
    MEMBERS,
    MESSAGE_COLUMNS,
    MESSAGES,
    ROOMS,
    Appended,
    MessageRow,
    Position,
    message_from_record,
    message_from_row,
)
from api.chat.views import POSTED
from api.core.db import Database

# --- send -------------------------------------------------------------------------------------

# One statement, one round trip: check membership, skip a retried clientMessageId, take the
# room's next seq (the UPDATE's row lock orders concurrent senders until commit, so seq order
# is commit order), insert the message and its MessagePosted log entry, and move the room up in
# each member's list (`touched`; the rooms row is always locked first, so senders cannot
# deadlock on the member rows). Two senders racing with the same clientMessageId both pass
# `existing`; the unique index then fails the second statement whole (its seq bump included),
# and the caller reads the winner's message.
_APPEND = """
WITH member AS (
    SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2
), existing AS (
    SELECT id, seq, type, data, created_at, edited_at, deleted_at FROM messages
    WHERE $5::varchar IS NOT NULL
      AND room_id = $1 AND sender_id = $2 AND client_message_id = $5::varchar
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1, last_activity_at = $6
    WHERE id = $1 AND EXISTS (SELECT 1 FROM member) AND NOT EXISTS (SELECT 1 FROM existing)
    RETURNING last_seq
), inserted AS (
    INSERT INTO messages (room_id, seq, sender_id, type, data, client_message_id, created_at)
    SELECT $1, last_seq, $2, $3, $4, $5::varchar, $6 FROM bumped
    RETURNING id, seq
), logged AS (
    INSERT INTO room_events (room_id, seq, kind, actor_id, created_at, message_id)
    SELECT $1, seq, 'posted', $2, $6, id FROM inserted
), touched AS (
    UPDATE room_members SET last_activity_at = $6
    WHERE room_id = $1 AND EXISTS (SELECT 1 FROM bumped)
)
SELECT EXISTS (SELECT 1 FROM member) AS is_member,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = $1) AS member_ids,
       i.id, i.seq,
       e.id AS e_id, e.seq AS e_seq, e.type AS e_type, e.data AS e_data,
       e.created_at AS e_created_at, e.edited_at AS e_edited_at, e.deleted_at AS e_deleted_at
FROM (SELECT 1) AS one
LEFT JOIN inserted i ON true
LEFT JOIN existing e ON true
"""
_ROOM_EXISTS = "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1)"
_BY_CLIENT_ID = f"""
SELECT {MESSAGE_COLUMNS} FROM messages
WHERE room_id = $1 AND sender_id = $2 AND client_message_id = $3
"""


class DuplicateClientId(Exception):
    """A concurrent send with the same clientMessageId committed first."""


async def append_message(
    db: Database,
    *,
    room_id: uuid.UUID,
    sender_id: uuid.UUID,
    type: str,
    data: str,
    client_message_id: str | None,
    at: datetime,
) -> Appended:
    """Store a message with the room's next seq, unless the sender already stored one with this
    clientMessageId; raises DuplicateClientId when a concurrent twin won."""
    if db.pg is not None:
        try:
            record = await db.pg.fetchrow(
                _APPEND, room_id, sender_id, type, data, client_message_id, at
            )
        except asyncpg.UniqueViolationError as error:
            raise DuplicateClientId() from error
        assert record is not None
        members = list(record["member_ids"])
        if not record["is_member"]:
            exists = await db.pg.fetchrow(_ROOM_EXISTS, room_id)
            return Appended(None, False, members, room_exists=bool(exists and exists[0]))
        if record["id"] is not None:
            # Only the id and seq come back: the rest is what was sent.
            stored = MessageRow(
                id=record["id"],
                room_id=room_id,
                seq=record["seq"],
                sender_id=sender_id,
                type=type,
                data=data,
                created_at=at,
                client_message_id=client_message_id,
            )
            return Appended(stored, True, members)
        existing = MessageRow(
            id=record["e_id"],
            room_id=room_id,
            seq=record["e_seq"],
            sender_id=sender_id,
            type=record["e_type"],
            data=record["e_data"],
            created_at=record["e_created_at"],
            client_message_id=client_message_id,
            edited_at=record["e_edited_at"],
            deleted_at=record["e_deleted_at"],
        )
        return Appended(existing, False, members)
    return await _append_sqlite(
        db,
        room_id=room_id,
        sender_id=sender_id,
        type=type,
        data=data,
        client_message_id=client_message_id,
        at=at,
    )


async def _append_sqlite(
    db: Database,
    *,
    room_id: uuid.UUID,
    sender_id: uuid.UUID,
    type: str,
    data: str,
    client_message_id: str | None,
    at: datetime,
) -> Appended:
    # The same steps in one IMMEDIATE transaction: SQLite has a single writer, so nothing can
    # interleave between the checks and the insert.
    async with db.write() as connection:
        members = list(
            (
                await connection.execute(
                    select(MEMBERS.c.user_id).where(MEMBERS.c.room_id == room_id)
                )
            ).scalars()
        )
        if sender_id not in members:
            exists = (
                await connection.execute(select(ROOMS.c.id).where(ROOMS.c.id == room_id))
            ).first() is not None
            return Appended(None, False, members, room_exists=exists)
        if client_message_id is not None:
            row = (
                await connection.execute(
                    select(MESSAGES).where(
                        MESSAGES.c.room_id == room_id,
                        MESSAGES.c.sender_id == sender_id,
                        MESSAGES.c.client_message_id == client_message_id,
                    )
                )
            ).first()
            if row is not None:
                return Appended(message_from_row(row), False, members)
        seq = (
            await connection.execute(
                update(ROOMS)
                .where(ROOMS.c.id == room_id)
                .values(last_seq=ROOMS.c.last_seq + 1, last_activity_at=at)
                .returning(ROOMS.c.last_seq)
            )
        ).scalar_one()
        await connection.execute(
            update(MEMBERS).where(MEMBERS.c.room_id == room_id).values(last_activity_at=at)
        )
        message_id = (
            await connection.execute(
                MESSAGES.insert()
                .values(
                    room_id=room_id,
                    seq=seq,
                    sender_id=sender_id,
                    type=type,
                    data=data,
                    client_message_id=client_message_id,
                    created_at=at,
                )
                .returning(MESSAGES.c.id)
            )
        ).scalar_one()
        await connection.execute(
            EVENTS.insert().values(
                room_id=room_id,
                seq=seq,
                kind=POSTED,
                actor_id=sender_id,
                created_at=at,
                message_id=message_id,
            )
        )
    message = MessageRow(
        id=message_id,
        room_id=room_id,
        seq=seq,
        sender_id=sender_id,
        type=type,
        data=data,
        created_at=at,
        client_message_id=client_message_id,
    )
    return Appended(message, True, members)


async def message_by_client_id(
    db: Database, *, room_id: uuid.UUID, sender_id: uuid.UUID, client_message_id: str
) -> MessageRow | None:
    """The sender's message with this clientMessageId in the room, if any."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_BY_CLIENT_ID, room_id, sender_id, client_message_id)
        return message_from_record(record) if record is not None else None
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(MESSAGES).where(
                    MESSAGES.c.room_id == room_id,
                    MESSAGES.c.sender_id == sender_id,
                    MESSAGES.c.client_message_id == client_message_id,
                )
            )
        ).first()
    return message_from_row(row) if row is not None else None


# --- rooms and membership -----------------------------------------------------------------------


_DIRECT_ROOM = "SELECT id FROM rooms WHERE direct_low = $1 AND direct_high = $2"
_CREATE_DIRECT_ROOM = """
INSERT INTO rooms (id, kind, last_seq, created_at, direct_low, direct_high)
VALUES ($1, $2, 0, $3, $4, $5)
ON CONFLICT (direct_low, direct_high) DO NOTHING
RETURNING id
"""


async def direct_room(db: Database, *, pair: tuple[uuid.UUID, uuid.UUID]) -> uuid.UUID | None:
    """The id of the direct room of a pair (lower id first), or None before it exists."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_DIRECT_ROOM, *pair)
        return record[0] if record is not None else None
    async with db.read() as connection:
        found: uuid.UUID | None = (
            await connection.execute(
                select(ROOMS.c.id).where(
                    ROOMS.c.direct_low == pair[0], ROOMS.c.direct_high == pair[1]
                )
            )
        ).scalar()
    return found


async def ensure_direct_room(
    db: Database, *, pair: tuple[uuid.UUID, uuid.UUID], at: datetime
) -> uuid.UUID:
    """The id of the direct room of a pair (lower id first), created with a random id and its
    two memberships unless it exists. Race-free: the unique (direct_low, direct_high) index
    lets one creator win; the others wait for it, do nothing and read its id."""
    if db.pg is not None:
        async with db.pg.connection() as connection, connection.transaction():
            created = await connection.fetchval(
                _CREATE_DIRECT_ROOM, uuid.uuid4(), DIRECT, at, *pair
            )
            if created is None:
                existing: uuid.UUID = await connection.fetchval(_DIRECT_ROOM, *pair)
                return existing
            await connection.executemany(
                "INSERT INTO room_members (room_id, user_id, joined_at) VALUES ($1, $2, $3)",
                [(created, member, at) for member in pair],
            )
            return created  # type: ignore[no-any-return]
    async with db.write() as connection:
        room_id = uuid.uuid4()
        inserted = await connection.execute(
            sqlite.insert(ROOMS)
            .values(
                id=room_id,
                kind=DIRECT,
                last_seq=0,
                created_at=at,
                direct_low=pair[0],
                direct_high=pair[1],
            )
            .on_conflict_do_nothing(index_elements=["direct_low", "direct_high"])
        )
        if inserted.rowcount != 1:
            existing = (
                await connection.execute(
                    select(ROOMS.c.id).where(
                        ROOMS.c.direct_low == pair[0], ROOMS.c.direct_high == pair[1]
                    )
                )
            ).scalar_one()
            return existing
        await connection.execute(
            MEMBERS.insert().values(
                [{"room_id": room_id, "user_id": m, "joined_at": at, "role": MEMBER} for m in pair]
            )
        )
    return room_id


_POSITION = """
SELECT last_seq, EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)
FROM rooms WHERE id = $1
"""


async def position(db: Database, *, room_id: uuid.UUID, user_id: uuid.UUID) -> Position | None:
    """The room's last seq and whether the user is a member; None without the room."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_POSITION, room_id, user_id)
        return Position(record[0], record[1]) if record is not None else None
    member = (
        select(MEMBERS.c.user_id)
        .where(MEMBERS.c.room_id == room_id, MEMBERS.c.user_id == user_id)
        .exists()
    )
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(ROOMS.c.last_seq, member.label("is_member")).where(ROOMS.c.id == room_id)
            )
        ).first()
    return Position(row.last_seq, bool(row.is_member)) if row is not None else None


_INBOX_POSITIONS = """
SELECT r.id, r.last_seq, m.joined_seq FROM room_members m JOIN rooms r ON r.id = m.room_id
WHERE m.user_id = $1
"""


async def inbox_positions(db: Database, *, user_id: uuid.UUID) -> dict[uuid.UUID, tuple[int, int]]:
    """Each of the user's rooms with its last seq and the seq of the user's MemberJoined entry
    (0 where they were there from the start)."""
    if db.pg is not None:
        return {r[0]: (r[1], r[2]) for r in await db.pg.fetch(_INBOX_POSITIONS, user_id)}
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(ROOMS.c.id, ROOMS.c.last_seq, MEMBERS.c.joined_seq)
                .join(MEMBERS, MEMBERS.c.room_id == ROOMS.c.id)
                .where(MEMBERS.c.user_id == user_id)
            )
        ).all()
    return {row.id: (row.last_seq, row.joined_seq) for row in rows}


_LEFT_AT = """
SELECT seq FROM room_events
WHERE room_id = $1 AND seq > $2 AND kind = 'left' AND member_id = $3
ORDER BY seq LIMIT 1
"""


async def left_at(
    db: Database, *, room_id: uuid.UUID, user_id: uuid.UUID, after_seq: int
) -> int | None:
    """The seq of the user's first MemberLeft entry in the room after a seq, if any."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_LEFT_AT, room_id, after_seq, user_id)
        return record[0] if record is not None else None
    async with db.read() as connection:
        found: int | None = (
            await connection.execute(
                select(EVENTS.c.seq)
                .where(
                    EVENTS.c.room_id == room_id,
                    EVENTS.c.seq > after_seq,
                    EVENTS.c.kind == "left",
                    EVENTS.c.member_id == user_id,
                )
                .order_by(EVENTS.c.seq)
                .limit(1)
            )
        ).scalar()
    return found
