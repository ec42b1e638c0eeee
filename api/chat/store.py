"""SQL of the chat module's hot paths: sending, history, the log, rooms and membership.

Changes other than sending (edits, reactions, membership) run in a room transaction of their
own (api.chat.changes).

On PostgreSQL the hot statements (send, membership with the room's position, history page,
messages after a seq, room list) are single prepared statements through asyncpg: one round
trip each, no ORM, no BEGIN/COMMIT around a single statement. SQLite runs the same steps
through SQLAlchemy Core, inside one write transaction where they must be atomic.

Rows come back without sender views: the users module supplies those (api.users.service).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Select, Uuid, and_, func, literal, select, tuple_, union_all, update
from sqlalchemy.dialects import sqlite

from api.chat.constants import DIRECT, MEMBER
from api.chat.models import Message, Reaction, Room, RoomEvent, RoomMember
from api.chat.views import POSTED
from api.core.db import Database

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
# A message's reactions as two parallel arrays in the order of their log seqs (the index
# (message_id, seq) serves it): grouped by emoji in Python, in first-use order.
REACTION_ARRAYS = """
       ARRAY(SELECT emoji FROM reactions WHERE message_id = {m}.id ORDER BY seq) AS r_emojis,
       ARRAY(SELECT user_id FROM reactions WHERE message_id = {m}.id ORDER BY seq) AS r_users
"""


def _grouped(
    pairs: Sequence[tuple[str, uuid.UUID]],
) -> tuple[tuple[str, tuple[uuid.UUID, ...]], ...]:
    """(emoji, user) pairs in log order, as reactions in first-use order."""
    grouped: dict[str, list[uuid.UUID]] = {}
    for emoji, user_id in pairs:
        grouped.setdefault(emoji, []).append(user_id)
    return tuple((emoji, tuple(users)) for emoji, users in grouped.items())


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
        reactions=_grouped(list(zip(emojis, record["r_users"], strict=True))) if emojis else (),
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
        replace(row, reactions=_grouped(found[row.id])) if row.id in found else row for row in rows
    ]


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


# --- history ------------------------------------------------------------------------------------

# Membership, the room's position and one keyset page in one round trip. The room row always
# comes back (with NULL message columns when the page is empty); no row means no such room.
_PAGE_COLUMNS = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS.split(", "))
_PAGE_FORWARD = f"""
SELECT r.last_seq, r.is_member, {_PAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
FROM (
    SELECT last_seq, EXISTS (
        SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2
    ) AS is_member
    FROM rooms WHERE id = $1
) AS r
LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages
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
        return where, [message_from_record(r) for r in records if r["id"] is not None]
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
        return found, await with_reactions(connection, [message_from_row(r) for r in rows])


# The log: entries with their messages as they are now.
_EVENT_COLUMNS = (
    "e.room_id AS e_room_id, e.seq AS e_seq, e.kind, e.actor_id, e.created_at AS e_created_at, "
    "e.message_id, e.member_id, e.detail"
)
_EVENTS_AFTER = f"""
SELECT {_EVENT_COLUMNS}, {_PAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
FROM room_events e LEFT JOIN messages m ON m.id = e.message_id AND e.kind IN ('posted', 'edited')
WHERE e.room_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4
"""
_EVENTS_PAGE_FORWARD = f"""
SELECT r.last_seq, r.is_member, {_EVENT_COLUMNS}, {_PAGE_COLUMNS},
       {REACTION_ARRAYS.format(m="m")}
FROM (
    SELECT last_seq, EXISTS (
        SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2
    ) AS is_member
    FROM rooms WHERE id = $1
) AS r
LEFT JOIN LATERAL (
    SELECT * FROM room_events
    WHERE r.is_member AND room_events.room_id = $1
      AND room_events.seq > $3 AND room_events.seq < $4
    ORDER BY room_events.seq ASC LIMIT $5
) AS e ON true
LEFT JOIN messages m ON m.id = e.message_id AND e.kind IN ('posted', 'edited')
"""
_EVENTS_PAGE_BACKWARD = _EVENTS_PAGE_FORWARD.replace(
    "ORDER BY room_events.seq ASC", "ORDER BY room_events.seq DESC"
)


def _event(record: Any) -> EventRow:
    return EventRow(
        room_id=record["e_room_id"],
        seq=record["e_seq"],
        kind=record["kind"],
        actor_id=record["actor_id"],
        created_at=record["e_created_at"],
        message_id=record["message_id"],
        member_id=record["member_id"],
        detail=record["detail"],
        message=message_from_record(record) if record["id"] is not None else None,
    )


def _events_sqlite() -> Select[Any]:
    labelled = [column.label(f"e_{column.name}") for column in EVENTS.c]
    return select(*labelled, *MESSAGES.c).select_from(
        EVENTS.outerjoin(
            MESSAGES,
            and_(MESSAGES.c.id == EVENTS.c.message_id, EVENTS.c.kind.in_(("posted", "edited"))),
        )
    )


async def _event_rows_sqlite(connection: Any, query: Select[Any]) -> list[EventRow]:
    rows = (await connection.execute(query)).all()
    messages = await with_reactions(
        connection, [message_from_row(row) for row in rows if row.id is not None]
    )
    by_id = {message.id: message for message in messages}
    return [
        EventRow(
            room_id=row.e_room_id,
            seq=row.e_seq,
            kind=row.e_kind,
            actor_id=row.e_actor_id,
            created_at=row.e_created_at,
            message_id=row.e_message_id,
            member_id=row.e_member_id,
            detail=row.e_detail,
            message=by_id.get(row.id) if row.id is not None else None,
        )
        for row in rows
    ]


async def events_after(
    db: Database, *, room_id: uuid.UUID, after_seq: int, up_to_seq: int | None, limit: int
) -> list[EventRow]:
    """Log entries with after_seq < seq <= up_to_seq, oldest first: resume and gap filling."""
    high = up_to_seq if up_to_seq is not None else NO_SEQ_LIMIT
    if db.pg is not None:
        records = await db.pg.fetch(_EVENTS_AFTER, room_id, after_seq, high, limit)
        return [_event(r) for r in records]
    query = (
        _events_sqlite()
        .where(EVENTS.c.room_id == room_id, EVENTS.c.seq > after_seq, EVENTS.c.seq <= high)
        .order_by(EVENTS.c.seq)
        .limit(limit)
    )
    async with db.read() as connection:
        return await _event_rows_sqlite(connection, query)


async def events_page(
    db: Database,
    *,
    room_id: uuid.UUID,
    user_id: uuid.UUID,
    after_seq: int | None,
    before_seq: int | None,
    size: int,
    forward: bool,
) -> tuple[Position | None, list[EventRow]]:
    """Like `page`, over every entry of the log."""
    low = after_seq if after_seq is not None else 0
    high = before_seq if before_seq is not None else NO_SEQ_LIMIT
    if db.pg is not None:
        records = await db.pg.fetch(
            _EVENTS_PAGE_FORWARD if forward else _EVENTS_PAGE_BACKWARD,
            room_id,
            user_id,
            low,
            high,
            size,
        )
        if not records:
            return None, []
        where = Position(records[0]["last_seq"], records[0]["is_member"])
        return where, [_event(r) for r in records if r["e_seq"] is not None]
    found = await position(db, room_id=room_id, user_id=user_id)
    if found is None or not found.is_member or not size:
        return found, []
    order = EVENTS.c.seq if forward else EVENTS.c.seq.desc()
    query = (
        _events_sqlite()
        .where(EVENTS.c.room_id == room_id, EVENTS.c.seq > low, EVENTS.c.seq < high)
        .order_by(order)
        .limit(size)
    )
    async with db.read() as connection:
        return found, await _event_rows_sqlite(connection, query)


# --- room lists ---------------------------------------------------------------------------------

# Each room with its members (parallel arrays in primary-key order, so no sort: put in the
# order they joined here) and its newest message that is not deleted (the index on
# (room_id, seq) read backwards, skipping tombstones).
_ROOM_COLUMNS = f"""
SELECT r.id AS r_id, r.kind, r.name AS r_name, r.last_seq AS r_last_seq,
       r.created_at AS r_created_at,
       ARRAY(SELECT user_id FROM room_members WHERE room_id = r.id
             ORDER BY user_id) AS member_ids,
       ARRAY(SELECT role FROM room_members WHERE room_id = r.id
             ORDER BY user_id) AS member_roles,
       ARRAY(SELECT joined_at FROM room_members WHERE room_id = r.id
             ORDER BY user_id) AS member_joined,
       ARRAY(SELECT joined_seq FROM room_members WHERE room_id = r.id
             ORDER BY user_id) AS member_joined_seq,
       ARRAY(SELECT read_seq FROM room_members WHERE room_id = r.id
             ORDER BY user_id) AS member_read_seq,
       {_PAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
"""
_LAST_MESSAGE = f"""
LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages
    WHERE messages.room_id = r.id AND messages.deleted_at IS NULL
    ORDER BY messages.seq DESC LIMIT 1
) AS m ON true
"""
# The user's rooms by their own last-activity column, in the order of the index
# (user_id, last_activity_at DESC, room_id DESC): a page reads its rows from the cursor on and
# stops, whatever the number of rooms. The first page and the later ones are separate
# statements, so each keeps a plan that uses the index.
_ROOMS_SELECT = f"""
{_ROOM_COLUMNS}, rm.last_activity_at
FROM room_members rm
JOIN rooms r ON r.id = rm.room_id
{_LAST_MESSAGE}
WHERE rm.user_id = $1 AND rm.last_activity_at IS NOT NULL
"""
_ROOMS_ORDER = """
ORDER BY rm.last_activity_at DESC, rm.room_id DESC
LIMIT $2
"""
ROOMS_FIRST = _ROOMS_SELECT + _ROOMS_ORDER
ROOMS_AFTER = _ROOMS_SELECT + "  AND (rm.last_activity_at, rm.room_id) < ($3, $4)" + _ROOMS_ORDER
_ROOM = f"""
{_ROOM_COLUMNS}, r.last_activity_at
FROM rooms r
{_LAST_MESSAGE}
WHERE r.id = $1
"""


def _room(record: Any) -> RoomRow:
    return RoomRow(
        id=record["r_id"],
        kind=record["kind"],
        name=record["r_name"],
        last_seq=record["r_last_seq"],
        created_at=record["r_created_at"],
        last_activity_at=record["last_activity_at"],
        members=[
            MemberRow(user_id, role, joined, read_seq)
            for _, joined, user_id, role, read_seq in sorted(
                zip(
                    record["member_joined_seq"],
                    record["member_joined"],
                    record["member_ids"],
                    record["member_roles"],
                    record["member_read_seq"],
                    strict=True,
                ),
                key=lambda member: (member[0], member[1], member[2]),
            )
        ],
        last_message=message_from_record(record) if record["id"] is not None else None,
    )


async def rooms_of(
    db: Database,
    *,
    user_id: uuid.UUID,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[RoomRow]:
    """The user's rooms with activity, most recent first (keyset on activity, id), each with
    its members and last message."""
    if db.pg is not None:
        if after is None:
            records = await db.pg.fetch(ROOMS_FIRST, user_id, limit)
        else:
            records = await db.pg.fetch(ROOMS_AFTER, user_id, limit, *after)
        return [_room(r) for r in records]
    async with db.read() as connection:
        rooms = (await connection.execute(rooms_of_sqlite(user_id, after, limit))).all()
        return await _sqlite_room_rows(connection, rooms, per_member=True)


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
        rows = await _sqlite_room_rows(connection, rooms, per_member=False)
    return rows[0] if rows else None


async def _sqlite_room_rows(
    connection: Any, rooms: Sequence[Any], *, per_member: bool
) -> list[RoomRow]:
    if not rooms:
        return []
    ids = [row.id for row in rooms]
    members: dict[uuid.UUID, list[MemberRow]] = {}
    for room_id, user_id, role, joined_at, read_seq in (
        await connection.execute(
            select(
                MEMBERS.c.room_id,
                MEMBERS.c.user_id,
                MEMBERS.c.role,
                MEMBERS.c.joined_at,
                MEMBERS.c.read_seq,
            )
            .where(MEMBERS.c.room_id.in_(ids))
            .order_by(MEMBERS.c.joined_seq, MEMBERS.c.joined_at, MEMBERS.c.user_id)
        )
    ).all():
        members.setdefault(room_id, []).append(MemberRow(user_id, role, joined_at, read_seq))
    last: dict[uuid.UUID, MessageRow] = {}
    newest = (
        select(MESSAGES.c.room_id, func.max(MESSAGES.c.seq).label("seq"))
        .where(MESSAGES.c.room_id.in_(ids), MESSAGES.c.deleted_at.is_(None))
        .group_by(MESSAGES.c.room_id)
        .subquery()
    )
    rows = (
        await connection.execute(
            select(MESSAGES).join(
                newest, and_(MESSAGES.c.room_id == newest.c.room_id, MESSAGES.c.seq == newest.c.seq)
            )
        )
    ).all()
    for message in await with_reactions(connection, [message_from_row(r) for r in rows]):
        last[message.room_id] = message
    return [
        RoomRow(
            id=row.id,
            kind=row.kind,
            name=row.name,
            last_seq=row.last_seq,
            created_at=row.created_at,
            last_activity_at=row.member_activity if per_member else row.last_activity_at,
            members=members.get(row.id, []),
            last_message=last.get(row.id),
        )
        for row in rooms
    ]


# --- read positions -------------------------------------------------------------------------------

_SAVE_READ = """
UPDATE room_members SET read_seq = GREATEST(read_seq, $3) WHERE room_id = $1 AND user_id = $2
"""


async def save_read_position(
    db: Database, *, room_id: uuid.UUID, user_id: uuid.UUID, seq: int
) -> None:
    """Move a member's read seq forward to `seq` (never back)."""
    if db.pg is not None:
        await db.pg.execute(_SAVE_READ, room_id, user_id, seq)
        return
    async with db.write() as connection:
        await connection.execute(
            update(MEMBERS)
            .where(MEMBERS.c.room_id == room_id, MEMBERS.c.user_id == user_id)
            .values(read_seq=func.max(MEMBERS.c.read_seq, seq))
        )


# Per room, the messages of others after the read seq that are not deleted, counted in the
# index (room_id, seq) and stopped at the cap, so a room with a million unread costs as much
# as one with a thousand.
_UNREAD = """
SELECT x.room_id, (
    SELECT count(*) FROM (
        SELECT 1 FROM messages m
        WHERE m.room_id = x.room_id AND m.seq > x.read_seq
          AND m.sender_id <> $1 AND m.deleted_at IS NULL
        ORDER BY m.seq LIMIT $4
    ) AS capped
) AS unread
FROM unnest($2::uuid[], $3::bigint[]) AS x(room_id, read_seq)
"""


def _unread_sqlite(user_id: uuid.UUID, room_id: uuid.UUID, read_seq: int, cap: int) -> Any:
    capped = (
        select(MESSAGES.c.id)
        .where(
            MESSAGES.c.room_id == room_id,
            MESSAGES.c.seq > read_seq,
            MESSAGES.c.sender_id != user_id,
            MESSAGES.c.deleted_at.is_(None),
        )
        .order_by(MESSAGES.c.seq)
        .limit(cap)
        .subquery()
    )
    return select(
        literal(room_id, type_=Uuid()).label("room_id"),
        select(func.count()).select_from(capped).scalar_subquery().label("unread"),
    )


async def unread_counts(
    db: Database, *, user_id: uuid.UUID, read_seqs: dict[uuid.UUID, int], cap: int
) -> dict[uuid.UUID, int]:
    """Unread messages per room for a user at the given read seqs, in one statement."""
    if not read_seqs:
        return {}
    rooms = list(read_seqs)
    if db.pg is not None:
        records = await db.pg.fetch(
            _UNREAD, user_id, rooms, [read_seqs[room] for room in rooms], cap
        )
        return {record[0]: record[1] for record in records}
    query = union_all(*(_unread_sqlite(user_id, room, read_seqs[room], cap) for room in rooms))
    async with db.read() as connection:
        rows = (await connection.execute(query)).all()
    return {row.room_id: row.unread for row in rows}


async def count_rooms_and_messages(db: Database) -> tuple[int, int]:
    """How many rooms and messages (deleted ones included: they stay as tombstones)."""
    async with db.read() as connection:
        rooms = (await connection.execute(select(func.count()).select_from(ROOMS))).scalar_one()
        messages = (
            await connection.execute(select(func.count()).select_from(MESSAGES))
        ).scalar_one()
    return int(rooms), int(messages)
