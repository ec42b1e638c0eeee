"""All SQL of the chat module: rooms, members and messages.

On PostgreSQL the hot statements (send, membership with the room's position, history page,
messages after a seq, room list) are single prepared statements through asyncpg: one round
trip each, no ORM, no BEGIN/COMMIT around a single statement. SQLite runs the same steps
through SQLAlchemy Core, inside one write transaction where they must be atomic.

Rows come back without sender views: the users module supplies those (api.users.service).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Select, and_, or_, select, tuple_, update
from sqlalchemy.dialects import sqlite

from api.chat.constants import DIRECT
from api.chat.models import Message, Room, RoomMember
from api.core.db import Database

ROOMS = Room.__table__  # type: ignore[attr-defined]
MEMBERS = RoomMember.__table__  # type: ignore[attr-defined]
MESSAGES = Message.__table__  # type: ignore[attr-defined]

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
    last_activity_at: datetime | None
    member_ids: list[uuid.UUID]
    last_message: MessageRow | None


_MESSAGE_COLUMNS = "id, room_id, seq, sender_id, type, data, created_at, client_message_id"


def _message(record: Any) -> MessageRow:
    return MessageRow(
        id=record["id"],
        room_id=record["room_id"],
        seq=record["seq"],
        sender_id=record["sender_id"],
        type=record["type"],
        data=record["data"],
        created_at=record["created_at"],
        client_message_id=record["client_message_id"],
    )


def _message_from_row(row: Any) -> MessageRow:
    return _message(row._mapping)


# --- send -------------------------------------------------------------------------------------

# One statement, one round trip: check membership, skip a retried clientMessageId, take the
# room's next seq (the UPDATE's row lock orders concurrent senders until commit, so seq order
# is commit order), insert, and move the room up in each member's list (`touched`; the rooms
# row is always locked first, so senders cannot deadlock on the member rows). Two senders
# racing with the same clientMessageId both pass `existing`; the unique index then fails the
# second statement whole (its seq bump included), and the caller reads the winner's message.
_APPEND = """
WITH member AS (
    SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2
), existing AS (
    SELECT id, seq, type, data, created_at FROM messages
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
), touched AS (
    UPDATE room_members SET last_activity_at = $6
    WHERE room_id = $1 AND EXISTS (SELECT 1 FROM bumped)
)
SELECT EXISTS (SELECT 1 FROM member) AS is_member,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = $1) AS member_ids,
       i.id, i.seq,
       e.id AS e_id, e.seq AS e_seq, e.type AS e_type, e.data AS e_data,
       e.created_at AS e_created_at
FROM (SELECT 1) AS one
LEFT JOIN inserted i ON true
LEFT JOIN existing e ON true
"""
_ROOM_EXISTS = "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = $1)"
_BY_CLIENT_ID = f"""
SELECT {_MESSAGE_COLUMNS} FROM messages
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
                return Appended(_message_from_row(row), False, members)
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
        return _message(record) if record is not None else None
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
    return _message_from_row(row) if row is not None else None


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
                "INSERT INTO room_members (room_id, user_id) VALUES ($1, $2)",
                [(created, member) for member in pair],
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
            MEMBERS.insert().values([{"room_id": room_id, "user_id": m} for m in pair])
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


_LAST_SEQS = """
SELECT r.id, r.last_seq FROM room_members m JOIN rooms r ON r.id = m.room_id
WHERE m.user_id = $1
"""


async def last_seqs(db: Database, *, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Each of the user's rooms with its last seq."""
    if db.pg is not None:
        return {record[0]: record[1] for record in await db.pg.fetch(_LAST_SEQS, user_id)}
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(ROOMS.c.id, ROOMS.c.last_seq)
                .join(MEMBERS, MEMBERS.c.room_id == ROOMS.c.id)
                .where(MEMBERS.c.user_id == user_id)
            )
        ).all()
    return {row.id: row.last_seq for row in rows}


# --- history ------------------------------------------------------------------------------------

# Membership, the room's position and one keyset page in one round trip. The room row always
# comes back (with NULL message columns when the page is empty); no row means no such room.
_PAGE_COLUMNS = ", ".join(f"m.{name}" for name in _MESSAGE_COLUMNS.split(", "))
_PAGE_FORWARD = f"""
SELECT r.last_seq, r.is_member, {_PAGE_COLUMNS}
FROM (
    SELECT last_seq, EXISTS (
        SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2
    ) AS is_member
    FROM rooms WHERE id = $1
) AS r
LEFT JOIN LATERAL (
    SELECT {_MESSAGE_COLUMNS} FROM messages
    WHERE r.is_member AND messages.room_id = $1 AND messages.seq > $3 AND messages.seq < $4
    ORDER BY messages.seq ASC LIMIT $5
) AS m ON true
"""
_PAGE_BACKWARD = _PAGE_FORWARD.replace("ORDER BY messages.seq ASC", "ORDER BY messages.seq DESC")


async def page(
    db: Database,
    *,
    room_id: uuid.UUID,
    user_id: uuid.UUID,
    after_seq: int | None,
    before_seq: int | None,
    size: int,
    forward: bool,
) -> tuple[Position | None, list[MessageRow]]:
    """The room's position for the user and up to `size` messages strictly between the seqs,
    oldest first when `forward`, newest first otherwise. No messages for outsiders."""
    low = after_seq if after_seq is not None else 0
    high = before_seq if before_seq is not None else NO_SEQ_LIMIT
    if db.pg is not None:
        records = await db.pg.fetch(
            _PAGE_FORWARD if forward else _PAGE_BACKWARD, room_id, user_id, low, high, size
        )
        if not records:
            return None, []
        where = Position(records[0]["last_seq"], records[0]["is_member"])
        return where, [_message(r) for r in records if r["id"] is not None]
    found = await position(db, room_id=room_id, user_id=user_id)
    if found is None or not found.is_member or not size:
        return found, []
    order = MESSAGES.c.seq if forward else MESSAGES.c.seq.desc()
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(MESSAGES)
                .where(MESSAGES.c.room_id == room_id, MESSAGES.c.seq > low, MESSAGES.c.seq < high)
                .order_by(order)
                .limit(size)
            )
        ).all()
    return found, [_message_from_row(row) for row in rows]


_AFTER = f"""
SELECT {_MESSAGE_COLUMNS} FROM messages
WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4
"""


async def messages_after(
    db: Database, *, room_id: uuid.UUID, after_seq: int, up_to_seq: int | None, limit: int
) -> list[MessageRow]:
    """Messages with after_seq < seq <= up_to_seq, oldest first: resume and gap filling."""
    high = up_to_seq if up_to_seq is not None else NO_SEQ_LIMIT
    if db.pg is not None:
        return [_message(r) for r in await db.pg.fetch(_AFTER, room_id, after_seq, high, limit)]
    async with db.read() as connection:
        rows = (
            await connection.execute(
                select(MESSAGES)
                .where(
                    MESSAGES.c.room_id == room_id,
                    MESSAGES.c.seq > after_seq,
                    MESSAGES.c.seq <= high,
                )
                .order_by(MESSAGES.c.seq)
                .limit(limit)
            )
        ).all()
    return [_message_from_row(row) for row in rows]


# --- room lists ---------------------------------------------------------------------------------

# The user's rooms by their own last-activity column, in the order of the index
# (user_id, last_activity_at DESC, room_id DESC): a page reads its rows from the cursor on and
# stops, whatever the number of rooms. The first page and the later ones are separate
# statements, so each keeps a plan that uses the index.
_ROOMS_SELECT = f"""
SELECT r.id AS r_id, r.kind, rm.last_activity_at,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = r.id) AS member_ids,
       {_PAGE_COLUMNS}
FROM room_members rm
JOIN rooms r ON r.id = rm.room_id
LEFT JOIN messages m ON m.room_id = r.id AND m.seq = r.last_seq
WHERE rm.user_id = $1 AND rm.last_activity_at IS NOT NULL
"""
_ROOMS_ORDER = """
ORDER BY rm.last_activity_at DESC, rm.room_id DESC
LIMIT $2
"""
ROOMS_FIRST = _ROOMS_SELECT + _ROOMS_ORDER
ROOMS_AFTER = _ROOMS_SELECT + "  AND (rm.last_activity_at, rm.room_id) < ($3, $4)" + _ROOMS_ORDER
_ROOM = f"""
SELECT r.id AS r_id, r.kind, r.last_activity_at,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = r.id) AS member_ids,
       {_PAGE_COLUMNS}
FROM rooms r
LEFT JOIN messages m ON m.room_id = r.id AND m.seq = r.last_seq
WHERE r.id = $1
"""


def _room(record: Any) -> RoomRow:
    return RoomRow(
        id=record["r_id"],
        kind=record["kind"],
        last_activity_at=record["last_activity_at"],
        member_ids=list(record["member_ids"]),
        last_message=_message(record) if record["id"] is not None else None,
    )


async def rooms_of(
    db: Database,
    *,
    user_id: uuid.UUID,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[RoomRow]:
    """The user's rooms that have messages, most recent activity first (keyset on activity,
    id), each with its members and last message."""
    if db.pg is not None:
        if after is None:
            records = await db.pg.fetch(ROOMS_FIRST, user_id, limit)
        else:
            records = await db.pg.fetch(ROOMS_AFTER, user_id, limit, *after)
        return [_room(r) for r in records]
    async with db.read() as connection:
        rooms = (await connection.execute(rooms_of_sqlite(user_id, after, limit))).all()
    return await _sqlite_room_rows(db, rooms)


def rooms_of_sqlite(
    user_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[Any]:
    """The room list's statement on SQLite (the same index order as on PostgreSQL)."""
    query = (
        select(ROOMS, MEMBERS.c.last_activity_at.label("member_activity"))
        .join(MEMBERS, MEMBERS.c.room_id == ROOMS.c.id)
        .where(MEMBERS.c.user_id == user_id, MEMBERS.c.last_activity_at.is_not(None))
    )
    if after is not None:
        query = query.where(tuple_(MEMBERS.c.last_activity_at, MEMBERS.c.room_id) < after)
    return query.order_by(MEMBERS.c.last_activity_at.desc(), MEMBERS.c.room_id.desc()).limit(limit)


async def room(db: Database, *, room_id: uuid.UUID) -> RoomRow | None:
    """One room with its members and last message."""
    if db.pg is not None:
        record = await db.pg.fetchrow(_ROOM, room_id)
        return _room(record) if record is not None else None
    async with db.read() as connection:
        rooms = (await connection.execute(select(ROOMS).where(ROOMS.c.id == room_id))).all()
    rows = await _sqlite_room_rows(db, rooms)
    return rows[0] if rows else None


async def _sqlite_room_rows(db: Database, rooms: Sequence[Any]) -> list[RoomRow]:
    if not rooms:
        return []
    ids = [row.id for row in rooms]
    async with db.read() as connection:
        members: dict[uuid.UUID, list[uuid.UUID]] = {}
        for room_id, member in (
            await connection.execute(
                select(MEMBERS.c.room_id, MEMBERS.c.user_id).where(MEMBERS.c.room_id.in_(ids))
            )
        ).all():
            members.setdefault(room_id, []).append(member)
        with_messages = [(row.id, row.last_seq) for row in rooms if row.last_seq > 0]
        last: dict[uuid.UUID, MessageRow] = {}
        if with_messages:
            for row in (
                await connection.execute(
                    select(MESSAGES).where(
                        or_(
                            *(
                                and_(MESSAGES.c.room_id == rid, MESSAGES.c.seq == seq)
                                for rid, seq in with_messages
                            )
                        )
                    )
                )
            ).all():
                message = _message_from_row(row)
                last[message.room_id] = message
    return [
        RoomRow(
            id=row.id,
            kind=row.kind,
            last_activity_at=row.last_activity_at,
            member_ids=members.get(row.id, []),
            last_message=last.get(row.id),
        )
        for row in rooms
    ]
