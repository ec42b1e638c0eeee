"""Room lists and single rooms with their members and last message; read positions and
unread counts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Select, Uuid, and_, func, literal, select, tuple_, union_all, update

from api.chat.store.rows import (
    M_MESSAGE_COLUMNS,
    MEMBERS,
    MESSAGE_COLUMNS,
    MESSAGES,
    REACTION_ARRAYS,
    REACTIONS,
    ROOMS,
    MemberRow,
    MessageRow,
    RoomRow,
    grouped,
    message_from_record,
)
from api.core.db import Database

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
       {M_MESSAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
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
        rows = (await connection.execute(rooms_of_sqlite(user_id, after, limit))).all()
    return [_sqlite_room(row, per_member=True) for row in rows]


def _room_select_sqlite() -> Select[Any]:
    """A room with its members and its newest message that is not deleted, in one statement
    on SQLite: the members and the message's reactions come as JSON arrays (with their seqs:
    the order is put right in Python, as SQLite 3.40's json_group_array takes no ORDER BY)."""
    members = MEMBERS.alias("members_of")
    reactions = REACTIONS.alias("reactions_of")
    newest = (
        select(func.max(MESSAGES.c.seq))
        .where(MESSAGES.c.room_id == ROOMS.c.id, MESSAGES.c.deleted_at.is_(None))
        .scalar_subquery()
    )
    last = MESSAGES.alias("m")
    member_list = (
        select(
            func.json_group_array(
                func.json_array(
                    members.c.user_id,
                    members.c.role,
                    members.c.joined_at,
                    members.c.joined_seq,
                    members.c.read_seq,
                )
            )
        )
        .where(members.c.room_id == ROOMS.c.id)
        .scalar_subquery()
    )
    reaction_list = (
        select(
            func.json_group_array(
                func.json_array(reactions.c.seq, reactions.c.emoji, reactions.c.user_id)
            )
        )
        .where(reactions.c.message_id == last.c.id)
        .scalar_subquery()
    )
    return select(
        ROOMS,
        member_list.label("members_json"),
        *(column.label(f"m_{column.name}") for column in last.c),
        reaction_list.label("reactions_json"),
    ).select_from(ROOMS.outerjoin(last, and_(last.c.room_id == ROOMS.c.id, last.c.seq == newest)))


def rooms_of_sqlite(
    user_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[Any]:
    """The room list's statement on SQLite (the same index order as on PostgreSQL)."""
    query = (
        _room_select_sqlite()
        .add_columns(MEMBERS.c.last_activity_at.label("member_activity"))
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
        row = (await connection.execute(_room_select_sqlite().where(ROOMS.c.id == room_id))).first()
    return _sqlite_room(row, per_member=False) if row is not None else None


def _stored_time(text: str | None) -> datetime | None:
    # As SQLite stores a UTCDateTime: naive UTC text.
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if text is not None else None


def _sqlite_room(row: Any, *, per_member: bool) -> RoomRow:
    members = sorted(
        (joined_seq, _stored_time(joined_at), uuid.UUID(user_id), role, read_seq)
        for user_id, role, joined_at, joined_seq, read_seq in orjson.loads(row.members_json)
    )
    last = None
    if row.m_id is not None:
        pairs = sorted(orjson.loads(row.reactions_json or "[]"))
        last = MessageRow(
            id=row.m_id,
            room_id=row.m_room_id,
            seq=row.m_seq,
            sender_id=row.m_sender_id,
            type=row.m_type,
            data=row.m_data,
            created_at=row.m_created_at,
            client_message_id=row.m_client_message_id,
            edited_at=row.m_edited_at,
            deleted_at=row.m_deleted_at,
            reactions=grouped([(emoji, uuid.UUID(user)) for _, emoji, user in pairs]),
        )
    return RoomRow(
        id=row.id,
        kind=row.kind,
        name=row.name,
        last_seq=row.last_seq,
        created_at=row.created_at,
        last_activity_at=row.member_activity if per_member else row.last_activity_at,
        members=[
            MemberRow(user_id, role, joined_at, read_seq)
            for _, joined_at, user_id, role, read_seq in members
        ],
        last_message=last,
    )


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
