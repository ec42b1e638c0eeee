"""SQL of the chat module's hot paths: sending, history, the log, rooms and membership.

Changes other than sending (edits, reactions, membership) run in a room transaction of their
own (api.chat.changes).

On PostgreSQL the hot statements (send, membership with the room's position, history page,
messages after a seq, room list) are single prepared statements through asyncpg: one round
trip each, no ORM, no BEGIN/COMMIT around a single statement. SQLite runs the same steps
through SQLAlchemy Core, inside one write transaction where they must be atomic.

Rows come back without sender views: the users module supplies those (api.users.service).
"""

from api.chat.store.history import (
    events_after,
    events_page,
    page,
)
from api.chat.store.rooms import (
    ROOMS_AFTER,
    ROOMS_FIRST,
    count_rooms_and_messages,
    room,
    rooms_of,
    rooms_of_sqlite,
    save_read_position,
    unread_counts,
)
from api.chat.store.rows import (
    EVENTS,
    M_MESSAGE_COLUMNS,
    MEMBERS,
    MESSAGE_COLUMNS,
    MESSAGES,
    NO_SEQ_LIMIT,
    REACTION_ARRAYS,
    REACTIONS,
    ROOMS,
    Appended,
    EventRow,
    MemberRow,
    MessageRow,
    Position,
    RoomRow,
    message_from_record,
    message_from_row,
    with_reactions,
)
from api.chat.store.send import (
    DuplicateClientId,
    append_message,
    direct_room,
    ensure_direct_room,
    inbox_positions,
    left_at,
    message_by_client_id,
    position,
)

__all__ = [
    "EVENTS",
    "MEMBERS",
    "MESSAGES",
    "MESSAGE_COLUMNS",
    "M_MESSAGE_COLUMNS",
    "NO_SEQ_LIMIT",
    "REACTIONS",
    "REACTION_ARRAYS",
    "ROOMS",
    "ROOMS_AFTER",
    "ROOMS_FIRST",
    "Appended",
    "DuplicateClientId",
    "EventRow",
    "MemberRow",
    "MessageRow",
    "Position",
    "RoomRow",
    "append_message",
    "count_rooms_and_messages",
    "direct_room",
    "ensure_direct_room",
    "events_after",
    "events_page",
    "inbox_positions",
    "left_at",
    "message_by_client_id",
    "message_from_record",
    "message_from_row",
    "page",
    "position",
    "room",
    "rooms_of",
    "rooms_of_sqlite",
    "save_read_position",
    "unread_counts",
    "with_reactions",
]
