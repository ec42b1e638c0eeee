"""Chat: direct rooms, sending (idempotent, gap-free seq), history, the log and room lists.

Group rooms live in api.chat.groups, edits, deletes and reactions in api.chat.editing.

The rules live here; every statement is in api.chat.store, and user views come from the users
module (its directory caches them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from api.chat import store
from api.chat.constants import (
    CLIENT_MESSAGE_ID_MAX_LENGTH,
    DEFAULT_PAGE_SIZE,
    DEFAULT_ROOMS_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MESSAGE_TYPE_PATTERN,
    room_channel,
    user_channel,
)
from api.chat.signals import Signals
from api.chat.store import EventRow, MessageRow, RoomRow
from api.chat.views import (
    POSTED,
    EventPage,
    EventView,
    MemberView,
    MessagePage,
    MessageView,
    ReactionView,
    RoomPage,
    RoomView,
    decode_message_cursor,
    decode_room_cursor,
)
from api.core.db import Database, parse_uuid, utcnow
from api.core.errors import BadUserInput, Forbidden, NotFound, RateLimited
from api.core.pubsub import PubSub
from api.core.ratelimit import RateLimiter
from api.core.tasks import Unfinished
from api.users import service as users
from api.users.cache import UserDirectory
from api.users.views import UserView

log = logging.getLogger(__name__)


def shown(name: str, limit: int = 64) -> str:
    """A name as an error message quotes it: cut short, since it is the client's input."""
    return repr(name if len(name) <= limit else name[:limit] + "…")


def direct_pair(a: uuid.UUID, b: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    """The two members of a direct room as the rooms table keys them, whoever asks."""
    low, high = sorted((a, b))
    return low, high


async def _direct_room_id(db: Database, a: uuid.UUID, b: uuid.UUID) -> uuid.UUID:
    """The id of the direct room of two users, created on first use. The id is random: user
    ids are public, and an id computed from them would tell anyone who talks to whom."""
    pair = direct_pair(a, b)
    found = await store.direct_room(db, pair=pair)
    return (
        found if found is not None else await store.ensure_direct_room(db, pair=pair, at=utcnow())
    )


def parse_room_id(room_id: str) -> uuid.UUID:
    """A room id from a client; BAD_USER_INPUT when it is not one."""
    try:
        return parse_uuid(room_id)
    except (ValueError, AttributeError, TypeError) as error:
        raise BadUserInput("Malformed room id.") from error


def validate_message(
    *, data: str, type: str, client_message_id: str | None, max_length: int
) -> None:
    """Raise BAD_USER_INPUT for content the database must never see."""
    if not data:
        raise BadUserInput("Message data must not be empty.")
    if len(data) > max_length:
        raise BadUserInput(f"Message data must be at most {max_length} characters.")
    if "\x00" in data:
        # PostgreSQL text cannot hold NUL; refuse it everywhere so both databases agree.
        raise BadUserInput("Message data must not contain NUL characters.")
    if not data.isascii() and any("\ud800" <= ch <= "\udfff" for ch in data):
        raise BadUserInput("Message data must be valid Unicode (no lone surrogates).")
    if not MESSAGE_TYPE_PATTERN.fullmatch(type):
        raise BadUserInput(
            "Message type must be a short identifier (a letter, then up to 31 of "
            "letters, digits, '_', '.', '+', '/', '-')."
        )
    if client_message_id is not None and not (
        0 < len(client_message_id) <= CLIENT_MESSAGE_ID_MAX_LENGTH
        and client_message_id.isprintable()
    ):
        raise BadUserInput(
            f"clientMessageId must be 1 to {CLIENT_MESSAGE_ID_MAX_LENGTH} printable characters."
        )


async def message_views(
    db: Database, directory: UserDirectory | None, rows: Sequence[MessageRow]
) -> list[MessageView]:
    senders = await users.user_views(
        db=db, ids={row.sender_id for row in rows}, directory=directory
    )
    return [_view(row, senders[row.sender_id]) for row in rows]


def _view(row: MessageRow, sender: UserView) -> MessageView:
    return MessageView(
        id=row.id,
        room_id=row.room_id,
        seq=row.seq,
        sender=sender,
        type=row.type,
        data=row.data,
        created_at=row.created_at,
        client_message_id=row.client_message_id,
        edited_at=row.edited_at,
        deleted_at=row.deleted_at,
        reactions=tuple(ReactionView(emoji, ids) for emoji, ids in row.reactions),
    )


async def event_views(
    db: Database, directory: UserDirectory | None, rows: Sequence[EventRow]
) -> list[EventView]:
    """Views of log entries: their actors, members and messages' senders from the users
    module."""
    wanted = {row.actor_id for row in rows}
    wanted |= {row.member_id for row in rows if row.member_id is not None}
    wanted |= {row.message.sender_id for row in rows if row.message is not None}
    people = await users.user_views(db=db, ids=wanted, directory=directory)
    return [
        EventView(
            room_id=row.room_id,
            seq=row.seq,
            kind=row.kind,
            actor=people[row.actor_id],
            created_at=row.created_at,
            message=(
                _view(row.message, people[row.message.sender_id])
                if row.message is not None
                else None
            ),
            message_id=row.message_id,
            member=people[row.member_id] if row.member_id is not None else None,
            detail=row.detail,
        )
        for row in rows
    ]


async def _peer(
    *, db: Database, directory: UserDirectory | None, me: UserView, name: str
) -> UserView:
    other = await users.find_user_by_name(db=db, name=name, directory=directory)
    if other is None:
        raise NotFound(f"No user named {shown(name)}.")
    if other.id == me.id:
        raise BadUserInput("A direct room needs two different users.")
    return other


async def open_direct_room(
    *, db: Database, me: UserView, with_name: str, directory: UserDirectory | None = None
) -> RoomView:
    """The direct room of the caller and another user, created on first use."""
    other = await _peer(db=db, directory=directory, me=me, name=with_name)
    room_id = await _direct_room_id(db, me.id, other.id)
    room = await get_room(db=db, user=me, room_id=room_id, directory=directory)
    assert room is not None
    return room


async def room_position(*, db: Database, user_id: uuid.UUID, room_id: uuid.UUID) -> int:
    """The room's last seq; NOT_FOUND without the room, FORBIDDEN unless the user is a member."""
    where = await store.position(db, room_id=room_id, user_id=user_id)
    if where is None:
        raise NotFound("No such room.")
    if not where.is_member:
        raise Forbidden()
    return where.last_seq


async def send_message(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    sender: UserView,
    room_id: uuid.UUID,
    data: str,
    type: str = "text",
    client_message_id: str | None = None,
    max_length: int = 4000,
    limiter: RateLimiter | None = None,
    signals: Signals | None = None,
) -> MessageView:
    """Store a message with the room's next seq, then wake subscribers.

    One statement checks membership, bumps `rooms.last_seq` (the row lock orders concurrent
    senders, so seq order is commit order) and inserts. A repeated clientMessageId returns the
    original message.
    """
    validate_message(
        data=data, type=type, client_message_id=client_message_id, max_length=max_length
    )
    return await unfinished.run(
        _send(
            db=db,
            pubsub=pubsub,
            sender=sender,
            room_id=room_id,
            data=data,
            type=type,
            client_message_id=client_message_id,
            limiter=limiter,
            signals=signals,
        )
    )


async def send_direct_message(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    sender: UserView,
    to: str,
    data: str,
    type: str = "text",
    client_message_id: str | None = None,
    max_length: int = 4000,
    limiter: RateLimiter | None = None,
    directory: UserDirectory | None = None,
    signals: Signals | None = None,
) -> MessageView:
    """Send to the direct room with another user, creating the room on first use."""
    validate_message(
        data=data, type=type, client_message_id=client_message_id, max_length=max_length
    )
    other = await _peer(db=db, directory=directory, me=sender, name=to)
    room_id = await _direct_room_id(db, sender.id, other.id)
    return await unfinished.run(
        _send(
            db=db,
            pubsub=pubsub,
            sender=sender,
            room_id=room_id,
            data=data,
            type=type,
            client_message_id=client_message_id,
            limiter=limiter,
            signals=signals,
        )
    )


async def _send(
    *,
    db: Database,
    pubsub: PubSub,
    sender: UserView,
    room_id: uuid.UUID,
    data: str,
    type: str,
    client_message_id: str | None,
    limiter: RateLimiter | None,
    signals: Signals | None = None,
) -> MessageView:
    # Runs to the end even if the request is cancelled (the client went away): a message
    # committed but never published would reach no subscriber until a later one showed the gap.
    if limiter is not None and limiter.limits.messages.enabled:
        try:
            await limiter.acquire(limiter.limits.messages, str(sender.id))
        except RateLimited:
            # Over the limit, a retry of a message already stored is still answered.
            if client_message_id is None:
                raise
            stored = await store.message_by_client_id(
                db, room_id=room_id, sender_id=sender.id, client_message_id=client_message_id
            )
            if stored is None:
                raise
    appended = await _append(
        db,
        room_id=room_id,
        sender=sender,
        data=data,
        type=type,
        client_message_id=client_message_id,
    )
    if appended is None:
        # A concurrent retry with the same clientMessageId committed first: answer with its
        # message. That send runs to the end and publishes it, so nothing is published here.
        assert client_message_id is not None
        row = await store.message_by_client_id(
            db, room_id=room_id, sender_id=sender.id, client_message_id=client_message_id
        )
        if row is None:
            raise RuntimeError("a clientMessageId conflicted but its message is missing")
        return _view(row, sender)
    assert appended.message is not None
    message = _view(appended.message, sender)
    # Also for a retry answered with the stored message: if the first attempt was cut off
    # between commit and publish, this is where subscribers hear of it (they drop duplicates).
    posted = EventView(
        room_id=message.room_id,
        seq=message.seq,
        kind=POSTED,
        actor=sender,
        created_at=message.created_at,
        message=message,
        message_id=message.id,
    )
    await publish_events(pubsub=pubsub, events=[posted], member_ids=appended.member_ids)
    if signals is not None:
        signals.message_posted(room_id=room_id, user=sender)
    return message


async def _append(
    db: Database,
    *,
    room_id: uuid.UUID,
    sender: UserView,
    data: str,
    type: str,
    client_message_id: str | None,
) -> store.Appended | None:
    """The appended (or earlier identical) message; None when a concurrent twin won."""
    try:
        appended = await store.append_message(
            db,
            room_id=room_id,
            sender_id=sender.id,
            type=type,
            data=data,
            client_message_id=client_message_id,
            at=utcnow(),
        )
    except store.DuplicateClientId:
        return None
    if appended.message is not None:
        return appended
    if not appended.room_exists:
        raise NotFound("No such room.")
    raise Forbidden()


async def publish_events(
    *, pubsub: PubSub, events: Sequence[EventView], member_ids: Sequence[uuid.UUID]
) -> None:
    """Wake the room's subscribers and each member's inbox (after the commit, never before),
    in seq order. `member_ids` are the members the entries concern: for a membership change,
    those before and after it, so a removed member's inbox hears of their own removal."""
    messages = []
    for event in events:
        payload = event.payload()
        messages.append((room_channel(event.room_id), payload))
        messages.extend((user_channel(member_id), payload) for member_id in member_ids)
    await pubsub.publish_many(messages)


async def read_events_after(
    *,
    db: Database,
    room_id: uuid.UUID,
    after_seq: int,
    limit: int,
    up_to_seq: int | None = None,
    directory: UserDirectory | None = None,
) -> list[EventView]:
    """Log entries with seq > after_seq (and <= up_to_seq), oldest first: resume and gap
    filling."""
    rows = await store.events_after(
        db, room_id=room_id, after_seq=after_seq, up_to_seq=up_to_seq, limit=limit
    )
    return await event_views(db, directory, rows)


async def left_at(
    *, db: Database, room_id: uuid.UUID, user_id: uuid.UUID, after_seq: int
) -> int | None:
    """The seq of the user's first MemberLeft entry in the room after a seq, if any."""
    return await store.left_at(db, room_id=room_id, user_id=user_id, after_seq=after_seq)


def _page_size(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if value < 0 or value > MAX_PAGE_SIZE:
        raise BadUserInput(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.")
    return value


def _paging(
    *,
    room_id: uuid.UUID,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
) -> tuple[int | None, int | None, int, bool]:
    """(after seq, before seq, page size, forward) from Relay arguments."""
    first = _page_size(first, "first")
    last = _page_size(last, "last")
    if first is not None and last is not None:
        raise BadUserInput("Pass either `first` or `last`, not both.")
    after_seq = decode_message_cursor(after, room_id=room_id) if after is not None else None
    before_seq = decode_message_cursor(before, room_id=room_id) if before is not None else None
    forward = first is not None
    size = first if forward else (last if last is not None else DEFAULT_PAGE_SIZE)
    assert size is not None
    return after_seq, before_seq, size, forward


def _checked(where: store.Position | None) -> store.Position:
    if where is None:
        raise NotFound("No such room.")
    if not where.is_member:
        raise Forbidden()
    return where


Row = TypeVar("Row")
View = TypeVar("View")


async def _keyset_page(
    read: Callable[..., Awaitable[tuple[store.Position | None, list[Row]]]],
    views: Callable[[Database, UserDirectory | None, Sequence[Row]], Awaitable[list[View]]],
    *,
    db: Database,
    user: UserView,
    room_id: uuid.UUID,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
    directory: UserDirectory | None,
) -> tuple[list[View], bool, bool]:
    """One keyset page (never OFFSET), oldest first within the page, and whether there is a
    next and a previous page.

    Cursors are log positions (any entry's works). One row beyond the page tells whether there
    is more in the paging direction; in the other, a page reaches its cursor, so there is
    nothing between the two (Relay's window of the arguments).
    """
    after_seq, before_seq, size, forward = _paging(
        room_id=room_id, first=first, after=after, last=last, before=before
    )
    where, rows = await read(
        db,
        room_id=room_id,
        user_id=user.id,
        after_seq=after_seq,
        before_seq=before_seq,
        size=size + 1,
        forward=forward,
    )
    _checked(where)
    more = len(rows) > size
    items = await views(db, directory, rows[:size])
    if not forward:
        items.reverse()
    return items, (more if forward else False), (False if forward else more)


async def list_messages(
    *,
    db: Database,
    user: UserView,
    room_id: uuid.UUID,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    directory: UserDirectory | None = None,
) -> MessagePage:
    """One keyset page of a room's messages (tombstones included)."""
    messages, has_next, has_previous = await _keyset_page(
        store.page,
        message_views,
        db=db,
        user=user,
        room_id=room_id,
        first=first,
        after=after,
        last=last,
        before=before,
        directory=directory,
    )
    return MessagePage(messages=messages, has_next_page=has_next, has_previous_page=has_previous)


async def list_events(
    *,
    db: Database,
    user: UserView,
    room_id: uuid.UUID,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
    directory: UserDirectory | None = None,
) -> EventPage:
    """One keyset page of a room's log, with the paging rules of `list_messages`."""
    events, has_next, has_previous = await _keyset_page(
        store.events_page,
        event_views,
        db=db,
        user=user,
        room_id=room_id,
        first=first,
        after=after,
        last=last,
        before=before,
        directory=directory,
    )
    return EventPage(events=events, has_next_page=has_next, has_previous_page=has_previous)


async def room_views(
    db: Database, directory: UserDirectory | None, rows: Sequence[RoomRow]
) -> list[RoomView]:
    """Views of rooms: members and last messages' senders from the users module."""
    wanted = {member for row in rows for member in row.member_ids}
    wanted |= {row.last_message.sender_id for row in rows if row.last_message}
    people = await users.user_views(db=db, ids=wanted, directory=directory)
    views = []
    for row in rows:
        members = [
            MemberView(
                user=people[member.user_id],
                role=member.role,
                joined_at=member.joined_at or row.created_at,
                read_seq=member.read_seq,
            )
            for member in row.members
            if member.user_id in people
        ]
        last = row.last_message
        views.append(
            RoomView(
                id=row.id,
                kind=row.kind,
                members=members,
                last_message=_view(last, people[last.sender_id]) if last else None,
                last_activity_at=row.last_activity_at,
                last_seq=row.last_seq,
                created_at=row.created_at,
                group_name=row.name,
            )
        )
    return views


async def get_room(
    *, db: Database, user: UserView, room_id: uuid.UUID, directory: UserDirectory | None = None
) -> RoomView | None:
    """A room the user is a member of; None when there is no such room, FORBIDDEN otherwise."""
    row = await store.room(db, room_id=room_id)
    if row is None:
        return None
    if user.id not in row.member_ids:
        raise Forbidden()
    return (await room_views(db, directory, [row]))[0]


async def list_rooms(
    *,
    db: Database,
    user: UserView,
    first: int | None = DEFAULT_ROOMS_PAGE_SIZE,
    after: str | None = None,
    directory: UserDirectory | None = None,
) -> RoomPage:
    """The user's rooms with activity (direct rooms with messages, every group), most recent
    activity first (keyset on activity, id)."""
    size = _page_size(first if first is not None else DEFAULT_ROOMS_PAGE_SIZE, "first")
    assert size is not None
    position = decode_room_cursor(after) if after is not None else None
    rows = await store.rooms_of(db, user_id=user.id, after=position, limit=size + 1)
    views = await room_views(db, directory, rows[:size])
    return RoomPage(
        rooms=views, has_next_page=len(rows) > size, has_previous_page=after is not None
    )


async def inbox_positions(*, db: Database, user_id: uuid.UUID) -> dict[uuid.UUID, tuple[int, int]]:
    """Each of the user's rooms with its last seq and the seq where the user joined it (the
    inbox's starting points)."""
    return await store.inbox_positions(db, user_id=user_id)
