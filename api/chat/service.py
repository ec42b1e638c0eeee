"""Chat: direct rooms, sending (idempotent, gap-free seq), history and room lists."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.chat.constants import (
    CLIENT_MESSAGE_ID_MAX_LENGTH,
    DEFAULT_PAGE_SIZE,
    DEFAULT_ROOMS_PAGE_SIZE,
    DIRECT,
    DIRECT_ROOM_NAMESPACE,
    MAX_PAGE_SIZE,
    MESSAGE_TYPE_PATTERN,
    room_channel,
    user_channel,
)
from api.chat.models import Message, Room, RoomMember
from api.chat.views import (
    MessagePage,
    MessageView,
    RoomPage,
    RoomView,
    UserView,
    decode_message_cursor,
    decode_room_cursor,
)
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Forbidden, NotFound
from api.core.pubsub import PubSub
from api.core.ratelimit import RateLimiter
from api.users import service as users
from api.users.models import User

log = logging.getLogger(__name__)


def direct_room_id(a: uuid.UUID, b: uuid.UUID) -> uuid.UUID:
    """The stable id of the direct room of two users, whoever asks."""
    low, high = sorted((a, b))
    return uuid.uuid5(DIRECT_ROOM_NAMESPACE, f"{low}:{high}")


def parse_room_id(room_id: str) -> uuid.UUID:
    """A room id from a client; BAD_USER_INPUT when it is not one."""
    try:
        return uuid.UUID(room_id)
    except (ValueError, AttributeError) as error:
        raise BadUserInput("Malformed room id.") from error


def user_view(user: User) -> UserView:
    return UserView(id=user.id, name=user.name, created_at=user.created_at)


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
    if any("\ud800" <= ch <= "\udfff" for ch in data):
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


def _insert_ignoring_conflicts(db: Database, table: Any, rows: list[dict[str, Any]]) -> Any:
    dialect = sqlite if db.is_sqlite else postgresql
    return dialect.insert(table).values(rows).on_conflict_do_nothing()


async def _ensure_direct_room(
    session: AsyncSession, db: Database, me: uuid.UUID, other: uuid.UUID
) -> uuid.UUID:
    room_id = direct_room_id(me, other)
    await session.execute(
        _insert_ignoring_conflicts(
            db,
            Room.__table__,  # type: ignore[attr-defined]
            [{"id": room_id, "kind": DIRECT, "last_seq": 0, "created_at": utcnow()}],
        )
    )
    await session.execute(
        _insert_ignoring_conflicts(
            db,
            RoomMember.__table__,  # type: ignore[attr-defined]
            [{"room_id": room_id, "user_id": me}, {"room_id": room_id, "user_id": other}],
        )
    )
    return room_id


async def _resolve_peer(*, db: Database, me: User, name: str) -> User:
    other = await users.find_user_by_name(db=db, name=name)
    if other is None:
        raise NotFound(f"No user named {name!r}.")
    if other.id == me.id:
        raise BadUserInput("A direct room needs two different users.")
    return other


async def open_direct_room(*, db: Database, me: User, with_name: str) -> RoomView:
    """The direct room of the caller and another user, created on first use."""
    other = await _resolve_peer(db=db, me=me, name=with_name)
    async with db.session(write=True) as session:
        room_id = await _ensure_direct_room(session, db, me.id, other.id)
    room = await get_room(db=db, user=me, room_id=room_id)
    assert room is not None
    return room


class _MemberCache:
    """Members of direct rooms by room id. A direct room's members never change (its id is
    derived from them), so an entry never goes stale; bounded, least recently used out."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self.entries: OrderedDict[uuid.UUID, list[uuid.UUID]] = OrderedDict()

    def get(self, room_id: uuid.UUID) -> list[uuid.UUID] | None:
        members = self.entries.get(room_id)
        if members is not None:
            self.entries.move_to_end(room_id)
        return members

    def put(self, room_id: uuid.UUID, members: list[uuid.UUID]) -> None:
        self.entries[room_id] = members
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


_direct_members = _MemberCache()


async def _member_ids(session: AsyncSession, room_id: uuid.UUID) -> list[uuid.UUID]:
    cached = _direct_members.get(room_id)
    if cached is not None:
        return cached
    rows = await session.scalars(
        select(col(RoomMember.user_id)).where(col(RoomMember.room_id) == room_id)
    )
    members = list(rows.all())
    if len(members) == 2:
        # Only direct rooms exist today; a future group room kind must not be cached here.
        _direct_members.put(room_id, members)
    return members


async def _require_member(
    session: AsyncSession, room_id: uuid.UUID, user_id: uuid.UUID
) -> list[uuid.UUID]:
    """The room's member ids; NOT_FOUND without the room, FORBIDDEN for outsiders."""
    members = await _member_ids(session, room_id)
    if user_id in members:
        return members
    if not members and await session.get(Room, room_id) is None:
        raise NotFound("No such room.")
    raise Forbidden()


async def check_membership(*, db: Database, user_id: uuid.UUID, room_id: uuid.UUID) -> None:
    """NOT_FOUND without the room, FORBIDDEN unless the user is a member."""
    async with db.session() as session:
        await _require_member(session, room_id, user_id)


async def _find_by_client_id(
    session: AsyncSession, room_id: uuid.UUID, sender: User, client_message_id: str
) -> MessageView | None:
    rows = (
        await session.execute(
            _messages_query().where(
                col(Message.room_id) == room_id,
                col(Message.sender_id) == sender.id,
                col(Message.client_message_id) == client_message_id,
            )
        )
    ).all()
    views = _views(rows)
    return views[0] if views else None


async def send_message(
    *,
    db: Database,
    pubsub: PubSub,
    sender: User,
    room_id: uuid.UUID,
    data: str,
    type: str = "text",
    client_message_id: str | None = None,
    max_length: int = 4000,
    limiter: RateLimiter | None = None,
) -> MessageView:
    """Store a message with the room's next seq, then wake subscribers.

    One transaction bumps `rooms.last_seq` (the row lock orders concurrent senders, so seq order
    is commit order) and inserts the message. A repeated clientMessageId returns the original.
    """
    validate_message(
        data=data, type=type, client_message_id=client_message_id, max_length=max_length
    )
    return await _finish_even_if_cancelled(
        _store_and_publish(
            db=db,
            pubsub=pubsub,
            sender=sender,
            room_id=room_id,
            peer_id=None,
            data=data,
            type=type,
            client_message_id=client_message_id,
            limiter=limiter,
        )
    )


async def send_direct_message(
    *,
    db: Database,
    pubsub: PubSub,
    sender: User,
    to: str,
    data: str,
    type: str = "text",
    client_message_id: str | None = None,
    max_length: int = 4000,
    limiter: RateLimiter | None = None,
) -> MessageView:
    """Send to the direct room with another user, creating the room on first use."""
    validate_message(
        data=data, type=type, client_message_id=client_message_id, max_length=max_length
    )
    other = await _resolve_peer(db=db, me=sender, name=to)
    return await _finish_even_if_cancelled(
        _store_and_publish(
            db=db,
            pubsub=pubsub,
            sender=sender,
            room_id=direct_room_id(sender.id, other.id),
            peer_id=other.id,
            data=data,
            type=type,
            client_message_id=client_message_id,
            limiter=limiter,
        )
    )


# Sends in progress, kept referenced so a cancelled request cannot lose them to the GC.
_in_flight: set[asyncio.Task[MessageView]] = set()


async def _finish_even_if_cancelled(work: Coroutine[Any, Any, MessageView]) -> MessageView:
    """Run a send to the end even if the request is cancelled (the client went away): a message
    committed but never published would reach no subscriber until a later one showed the gap."""
    task = asyncio.ensure_future(work)
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)
    return await asyncio.shield(task)


async def _store_and_publish(
    *,
    db: Database,
    pubsub: PubSub,
    sender: User,
    room_id: uuid.UUID,
    peer_id: uuid.UUID | None,
    data: str,
    type: str,
    client_message_id: str | None,
    limiter: RateLimiter | None,
) -> MessageView:
    if limiter is not None and limiter.limits.messages.enabled:
        existing = None
        if client_message_id is not None:
            # A retry of a message already stored is answered, not counted against the limit.
            async with db.session() as session:
                existing = await _find_by_client_id(session, room_id, sender, client_message_id)
        if existing is None:
            await limiter.acquire(limiter.limits.messages, str(sender.id))
    try:
        stored = await _store(
            db=db,
            sender=sender,
            room_id=room_id,
            peer_id=peer_id,
            data=data,
            type=type,
            client_message_id=client_message_id,
        )
    except IntegrityError:
        if client_message_id is None:
            raise
        # A concurrent retry with the same clientMessageId committed first: return its message.
        async with db.session() as session:
            existing = await _find_by_client_id(session, room_id, sender, client_message_id)
        if existing is None:
            raise
        return existing
    message, member_ids, _ = stored
    # Also for a retry answered with the stored message: if the first attempt was cut off
    # between commit and publish, this is where subscribers hear of it (they drop duplicates).
    await publish_message(pubsub=pubsub, message=message, member_ids=member_ids)
    return message


async def _store(
    *,
    db: Database,
    sender: User,
    room_id: uuid.UUID,
    peer_id: uuid.UUID | None,
    data: str,
    type: str,
    client_message_id: str | None,
) -> tuple[MessageView, list[uuid.UUID], bool]:
    async with db.session(write=True) as session:
        if peer_id is not None and _direct_members.get(room_id) is None:
            await _ensure_direct_room(session, db, sender.id, peer_id)
        member_ids = await _require_member(session, room_id, sender.id)
        if client_message_id is not None:
            existing = await _find_by_client_id(session, room_id, sender, client_message_id)
            if existing is not None:
                return existing, member_ids, False
        now = utcnow()
        values = {
            "room_id": room_id,
            "sender_id": sender.id,
            "type": type,
            "data": data,
            "client_message_id": client_message_id,
            "created_at": now,
        }
        message_id, seq = await _insert_next(session, db, room_id, now, values)
        view = MessageView(
            id=message_id,
            room_id=room_id,
            seq=seq,
            sender=user_view(sender),
            type=type,
            data=data,
            created_at=now,
            client_message_id=client_message_id,
        )
        return view, member_ids, True


async def _insert_next(
    session: AsyncSession, db: Database, room_id: uuid.UUID, now: datetime, values: dict[str, Any]
) -> tuple[int, int]:
    """Take the room's next seq and insert the message with it: (message id, seq).

    The UPDATE locks the room row until commit, so concurrent senders queue there and seq
    order is commit order. On PostgreSQL both happen in one statement (one round trip).
    """
    bump = (
        update(Room)
        .where(col(Room.id) == room_id)
        .values(last_seq=col(Room.last_seq) + 1, last_activity_at=now)
        .returning(col(Room.last_seq))
    )
    table = Message.__table__  # type: ignore[attr-defined]
    if not db.is_sqlite:
        bumped = bump.cte("bumped")
        columns = [*values, "seq"]
        source = select(
            *(literal(v, type_=table.c[k].type) for k, v in values.items()), bumped.c.last_seq
        )
        statement = insert(table).from_select(columns, source).returning(table.c.id, table.c.seq)
        row = (await session.execute(statement)).one()
        return int(row.id), int(row.seq)
    # SQLite has no UPDATE inside WITH; two statements in the same (exclusive) transaction.
    seq = await session.scalar(bump)
    assert seq is not None
    row = (
        await session.execute(
            insert(table).values(**values, seq=seq).returning(table.c.id, table.c.seq)
        )
    ).one()
    return int(row.id), int(row.seq)


async def publish_message(
    *, pubsub: PubSub, message: MessageView, member_ids: Sequence[uuid.UUID]
) -> None:
    """Wake the room's subscribers and each member's inbox (after the commit, never before)."""
    payload = message.to_json()
    await pubsub.publish(room_channel(message.room_id), payload)
    for member_id in member_ids:
        await pubsub.publish(user_channel(member_id), payload)


_MESSAGES = Message.__table__  # type: ignore[attr-defined]
_USERS = User.__table__  # type: ignore[attr-defined]


def _messages_query() -> Any:
    # Plain rows straight into MessageView: history pages build no ORM objects, and only what
    # a sender shows is read (never the password hash).
    return select(
        _MESSAGES.c.id,
        _MESSAGES.c.room_id,
        _MESSAGES.c.seq,
        _MESSAGES.c.type,
        _MESSAGES.c.data,
        _MESSAGES.c.created_at,
        _MESSAGES.c.client_message_id,
        _MESSAGES.c.sender_id,
        _USERS.c.name.label("sender_name"),
        _USERS.c.created_at.label("sender_created_at"),
    ).join(_USERS, _USERS.c.id == _MESSAGES.c.sender_id)


def _views(rows: Sequence[Any]) -> list[MessageView]:
    senders: dict[uuid.UUID, UserView] = {}
    views = []
    for row in rows:
        sender = senders.get(row.sender_id)
        if sender is None:
            sender = senders[row.sender_id] = UserView(
                id=row.sender_id, name=row.sender_name, created_at=row.sender_created_at
            )
        views.append(
            MessageView(
                id=row.id,
                room_id=row.room_id,
                seq=row.seq,
                sender=sender,
                type=row.type,
                data=row.data,
                created_at=row.created_at,
                client_message_id=row.client_message_id,
            )
        )
    return views


async def read_messages_after(
    *, db: Database, room_id: uuid.UUID, after_seq: int, limit: int, up_to_seq: int | None = None
) -> list[MessageView]:
    """Messages with seq > after_seq (and <= up_to_seq), oldest first: resume and gap filling."""
    query = _messages_query().where(col(Message.room_id) == room_id, col(Message.seq) > after_seq)
    if up_to_seq is not None:
        query = query.where(col(Message.seq) <= up_to_seq)
    async with db.session() as session:
        rows = (await session.execute(query.order_by(col(Message.seq)).limit(limit))).all()
    return _views(rows)


def _page_size(value: int | None, name: str) -> int | None:
    if value is None:
        return None
    if value < 0 or value > MAX_PAGE_SIZE:
        raise BadUserInput(f"`{name}` must be between 0 and {MAX_PAGE_SIZE}.")
    return value


async def list_messages(
    *,
    db: Database,
    user: User,
    room_id: uuid.UUID,
    first: int | None = None,
    after: str | None = None,
    last: int | None = None,
    before: str | None = None,
) -> MessagePage:
    """One keyset page of a room's history (never OFFSET), oldest first within the page.

    Seqs run 1, 2, 3 ... without gaps, so whether a page has neighbours follows from its
    first and last seq and the room's last_seq, without another query.
    """
    first = _page_size(first, "first")
    last = _page_size(last, "last")
    if first is not None and last is not None:
        raise BadUserInput("Pass either `first` or `last`, not both.")
    after_seq = decode_message_cursor(after, room_id=room_id) if after is not None else None
    before_seq = decode_message_cursor(before, room_id=room_id) if before is not None else None
    forward = first is not None
    if first is None and last is None:
        last = DEFAULT_PAGE_SIZE
    query = _messages_query().where(col(Message.room_id) == room_id)
    if after_seq is not None:
        query = query.where(col(Message.seq) > after_seq)
    if before_seq is not None:
        query = query.where(col(Message.seq) < before_seq)
    size = first if forward else last
    assert size is not None
    order = col(Message.seq) if forward else col(Message.seq).desc()
    async with db.session() as session:
        await _require_member(session, room_id, user.id)
        last_seq = (
            await session.scalar(select(col(Room.last_seq)).where(col(Room.id) == room_id)) or 0
        )
        rows = (await session.execute(query.order_by(order).limit(size))).all() if size else []
    messages = _views(rows)
    if not forward:
        messages.reverse()
    if messages:
        low, high = messages[0].seq, messages[-1].seq
    else:
        # An empty page sits between its cursors.
        if forward:
            low = (after_seq or 0) + 1
        else:
            low = min(last_seq + 1 if before_seq is None else before_seq, last_seq + 1)
        high = low - 1
        if forward and before_seq is not None:
            high = min(high, before_seq - 1)
    upper_bound = last_seq if before_seq is None else min(last_seq, before_seq - 1)
    lower_bound = 1 if after_seq is None else after_seq + 1
    return MessagePage(
        messages=messages,
        has_next_page=high < upper_bound,
        has_previous_page=low > lower_bound,
    )


async def _room_views(session: AsyncSession, rooms: Sequence[Room]) -> list[RoomView]:
    if not rooms:
        return []
    room_ids = [room.id for room in rooms]
    member_rows = (
        await session.execute(
            select(col(RoomMember.room_id), User)
            .join(User, col(User.id) == col(RoomMember.user_id))
            .where(col(RoomMember.room_id).in_(room_ids))
        )
    ).all()
    members: dict[uuid.UUID, list[UserView]] = {}
    for room_id, member in member_rows:
        members.setdefault(room_id, []).append(user_view(member))
    with_messages = [room for room in rooms if room.last_seq > 0]
    last_messages: dict[uuid.UUID, MessageView] = {}
    if with_messages:
        rows = (
            await session.execute(
                _messages_query().where(
                    or_(
                        *(
                            and_(col(Message.room_id) == room.id, col(Message.seq) == room.last_seq)
                            for room in with_messages
                        )
                    )
                )
            )
        ).all()
        last_messages = {view.room_id: view for view in _views(rows)}
    return [
        RoomView(
            id=room.id,
            kind=room.kind,
            members=sorted(members.get(room.id, []), key=lambda member: member.name),
            last_message=last_messages.get(room.id),
            last_activity_at=room.last_activity_at,
        )
        for room in rooms
    ]


async def get_room(*, db: Database, user: User, room_id: uuid.UUID) -> RoomView | None:
    """A room the user is a member of; None when there is no such room, FORBIDDEN otherwise."""
    async with db.session() as session:
        try:
            await _require_member(session, room_id, user.id)
        except NotFound:
            return None
        room = await session.get(Room, room_id)
        assert room is not None
        views = await _room_views(session, [room])
    return views[0]


async def list_rooms(
    *,
    db: Database,
    user: User,
    first: int | None = DEFAULT_ROOMS_PAGE_SIZE,
    after: str | None = None,
) -> RoomPage:
    """The user's rooms that have messages, most recent activity first (keyset on activity, id)."""
    size = _page_size(first if first is not None else DEFAULT_ROOMS_PAGE_SIZE, "first")
    assert size is not None
    query = (
        select(Room)
        .join(RoomMember, col(RoomMember.room_id) == col(Room.id))
        .where(col(RoomMember.user_id) == user.id, col(Room.last_activity_at).is_not(None))
    )
    if after is not None:
        at, room_id = decode_room_cursor(after)
        query = query.where(
            or_(
                col(Room.last_activity_at) < at,
                and_(col(Room.last_activity_at) == at, col(Room.id) < room_id),
            )
        )
    query = query.order_by(col(Room.last_activity_at).desc(), col(Room.id).desc()).limit(size + 1)
    async with db.session() as session:
        rooms = list((await session.scalars(query)).all())
        has_next = len(rooms) > size
        views = await _room_views(session, rooms[:size])
    return RoomPage(rooms=views, has_next_page=has_next, has_previous_page=after is not None)


async def room_last_seqs(*, db: Database, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Each of the user's rooms with its last seq (the inbox's starting point)."""
    async with db.session() as session:
        rows = (
            await session.execute(
                select(col(Room.id), col(Room.last_seq))
                .join(RoomMember, col(RoomMember.room_id) == col(Room.id))
                .where(col(RoomMember.user_id) == user_id)
            )
        ).all()
    return {room_id: last_seq for room_id, last_seq in rows}


async def room_last_seq(*, db: Database, room_id: uuid.UUID) -> int:
    """The room's last seq (0 before its first message)."""
    async with db.session() as session:
        value = await session.scalar(select(col(Room.last_seq)).where(col(Room.id) == room_id))
    return int(value or 0)
