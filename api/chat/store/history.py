"""History: keyset pages of messages and of the log, and log entries after a seq."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, and_, select

from api.chat.store.rows import (
    EVENTS,
    M_MESSAGE_COLUMNS,
    MESSAGE_COLUMNS,
    MESSAGES,
    NO_SEQ_LIMIT,
    REACTION_ARRAYS,
    EventRow,
    MessageRow,
    Position,
    message_from_record,
    message_from_row,
    with_reactions,
)
from api.chat.store.send import position
from api.core.db import Database

# --- history ------------------------------------------------------------------------------------

# Membership, the room's position and one keyset page in one round trip. The room row always
# comes back (with NULL message columns when the page is empty); no row means no such room.
_PAGE_FORWARD = f"""
SELECT r.last_seq, r.is_member, {M_MESSAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
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


def _bounds(after_seq: int | None, before_seq: int | None) -> tuple[int, int]:
    """The open interval of seqs a page is taken from."""
    low = after_seq if after_seq is not None else 0
    high = before_seq if before_seq is not None else NO_SEQ_LIMIT
    return low, high


async def _page_records(db: Database, sql: str, *args: Any) -> tuple[Position | None, list[Any]]:
    """One page statement on PostgreSQL (room, user, low, high, size): the room's position for
    the user (every row carries it; an outsider's or an empty page still has one row) and the
    rows."""
    assert db.pg is not None
    records = await db.pg.fetch(sql, *args)
    if not records:
        return None, []
    return Position(records[0]["last_seq"], records[0]["is_member"]), records


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
    low, high = _bounds(after_seq, before_seq)
    if db.pg is not None:
        sql = _PAGE_FORWARD if forward else _PAGE_BACKWARD
        where, records = await _page_records(db, sql, room_id, user_id, low, high, size)
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
SELECT {_EVENT_COLUMNS}, {M_MESSAGE_COLUMNS}, {REACTION_ARRAYS.format(m="m")}
FROM room_events e LEFT JOIN messages m ON m.id = e.message_id AND e.kind IN ('posted', 'edited')
WHERE e.room_id = $1 AND e.seq > $2 AND e.seq <= $3 ORDER BY e.seq LIMIT $4
"""
_EVENTS_PAGE_FORWARD = f"""
SELECT r.last_seq, r.is_member, {_EVENT_COLUMNS}, {M_MESSAGE_COLUMNS},
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
    low, high = _bounds(after_seq, before_seq)
    if db.pg is not None:
        sql = _EVENTS_PAGE_FORWARD if forward else _EVENTS_PAGE_BACKWARD
        where, records = await _page_records(db, sql, room_id, user_id, low, high, size)
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
