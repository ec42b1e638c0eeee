"""Plain read models of chat, shared by database reads and pub/sub payloads."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from api.core.errors import BadUserInput
from api.users.views import UserView

__all__ = [
    "EventPage",
    "EventView",
    "MemberView",
    "MessagePage",
    "MessageView",
    "ReactionView",
    "RoomPage",
    "RoomView",
    "UserView",
]


# Kinds of log entries (room_events.kind).
POSTED = "posted"
EDITED = "edited"
DELETED = "deleted"
REACTION_ADDED = "reacted"
REACTION_REMOVED = "unreacted"
JOINED = "joined"
LEFT = "left"
ROLE_CHANGED = "role"
RENAMED = "renamed"
# Entries whose `message` is the message as it is now.
WITH_MESSAGE = frozenset({POSTED, EDITED})


@dataclass(frozen=True, slots=True)
class ReactionView:
    """One emoji on a message and who used it, in the order they did."""

    emoji: str
    user_ids: tuple[uuid.UUID, ...]

    @property
    def count(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True, slots=True)
class MessageView:
    id: int
    room_id: uuid.UUID
    seq: int
    sender: UserView
    type: str
    data: str
    created_at: datetime
    client_message_id: str | None
    edited_at: datetime | None = None
    deleted_at: datetime | None = None
    reactions: tuple[ReactionView, ...] = ()

    @property
    def cursor(self) -> str:
        return encode_message_cursor(self.room_id, self.seq)

    def to_raw(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "sender": _user_raw(self.sender),
            "type": self.type,
            "data": self.data,
            "at": self.created_at.isoformat(),
            "cmid": self.client_message_id,
            "edited": self.edited_at.isoformat() if self.edited_at else None,
            "deleted": self.deleted_at.isoformat() if self.deleted_at else None,
            "reactions": [[r.emoji, [str(u) for u in r.user_ids]] for r in self.reactions],
        }

    @classmethod
    def from_raw(cls, raw: dict[str, Any], room_id: uuid.UUID) -> MessageView:
        return cls(
            id=raw["id"],
            room_id=room_id,
            seq=raw["seq"],
            sender=_user_from_raw(raw["sender"]),
            type=raw["type"],
            data=raw["data"],
            created_at=datetime.fromisoformat(raw["at"]),
            client_message_id=raw["cmid"],
            edited_at=_time(raw["edited"]),
            deleted_at=_time(raw["deleted"]),
            reactions=tuple(
                ReactionView(emoji, tuple(uuid.UUID(u) for u in ids))
                for emoji, ids in raw["reactions"]
            ),
        )


@dataclass(frozen=True, slots=True)
class EventView:
    """One entry of a room's log, with what its kind carries: the message as it is now
    (posted, edited), the message id and emoji (deleted, reactions), the member and role
    (membership, roles) or the new name (renamed)."""

    room_id: uuid.UUID
    seq: int
    kind: str
    actor: UserView
    created_at: datetime
    message: MessageView | None = None
    message_id: int | None = None
    member: UserView | None = None
    detail: str | None = None

    @property
    def cursor(self) -> str:
        return encode_message_cursor(self.room_id, self.seq)

    def payload(self) -> EventPayload:
        """The pub/sub payload: everything a subscriber needs, so delivery reads no database."""
        return EventPayload(self)

    def to_json(self) -> str:
        """The payload's text, as it travels through a broker."""
        return self._encode()

    def _encode(self) -> str:
        return orjson.dumps(
            {
                "room": str(self.room_id),
                "seq": self.seq,
                "kind": self.kind,
                "actor": _user_raw(self.actor),
                "at": self.created_at.isoformat(),
                "message": self.message.to_raw() if self.message is not None else None,
                "mid": self.message_id,
                "member": _user_raw(self.member) if self.member is not None else None,
                "detail": self.detail,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | EventPayload) -> EventView:
        """Parse a pub/sub payload."""
        if isinstance(text, EventPayload):
            return text.event
        raw: dict[str, Any] = orjson.loads(text)
        room_id = uuid.UUID(raw["room"])
        message = raw["message"]
        member = raw["member"]
        return cls(
            room_id=room_id,
            seq=raw["seq"],
            kind=raw["kind"],
            actor=_user_from_raw(raw["actor"]),
            created_at=datetime.fromisoformat(raw["at"]),
            message=MessageView.from_raw(message, room_id) if message is not None else None,
            message_id=raw["mid"],
            member=_user_from_raw(member) if member is not None else None,
            detail=raw["detail"],
        )


def _user_raw(user: UserView) -> list[str]:
    return [str(user.id), user.name, user.created_at.isoformat()]


def _user_from_raw(raw: list[str]) -> UserView:
    user_id, name, created = raw
    return UserView(id=uuid.UUID(user_id), name=name, created_at=datetime.fromisoformat(created))


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


@dataclass(frozen=True, slots=True)
class MemberView:
    user: UserView
    role: str
    joined_at: datetime
    read_seq: int = 0


class EventPayload:
    """A pub/sub payload that is still the view it stands for. In-process pub/sub hands this
    object itself to the subscribers, which take the view: nothing is encoded or parsed (two
    UUIDs and three timestamps per message). Only what leaves the process, a broker's message,
    is text: `str(payload)` encodes it, once."""

    __slots__ = ("_text", "event")

    def __init__(self, event: EventView) -> None:
        self.event = event
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self.event.to_json()
        return self._text


@dataclass(frozen=True, slots=True)
class RoomView:
    id: uuid.UUID
    kind: str
    members: list[MemberView]
    last_message: MessageView | None
    last_activity_at: datetime | None
    last_seq: int
    created_at: datetime
    group_name: str | None = None

    @property
    def name(self) -> str:
        """A group's name; for a direct room, the two member names, sorted, joined by ", "."""
        if self.group_name is not None:
            return self.group_name
        return ", ".join(sorted(member.user.name for member in self.members))


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[EventView]
    has_next_page: bool
    has_previous_page: bool


@dataclass(frozen=True, slots=True)
class MessagePage:
    messages: list[MessageView]
    has_next_page: bool
    has_previous_page: bool


@dataclass(frozen=True, slots=True)
class RoomPage:
    rooms: list[RoomView]
    has_next_page: bool
    has_previous_page: bool


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64encode(text: str) -> str:
    # base64.urlsafe_b64encode without its two layers of Python (a cursor per result).
    encoded = binascii.b2a_base64(text.encode(), newline=False).translate(_URLSAFE)
    return encoded.decode().rstrip("=")


def _b64decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise BadUserInput("Malformed cursor.") from error


def encode_message_cursor(room_id: uuid.UUID, seq: int) -> str:
    """The opaque position of a log entry (a message's is its MessagePosted entry's): the same
    in edges, Message.cursor, RoomEvent.cursor and both room subscriptions."""
    return _b64encode(f"m:{room_id}:{seq}")


def decode_message_cursor(cursor: str, *, room_id: uuid.UUID) -> int:
    """The seq a cursor points at; BAD_USER_INPUT when malformed or from another room."""
    if len(cursor) > 200:
        raise BadUserInput("Malformed cursor.")
    kind, _, rest = _b64decode(cursor).partition(":")
    cursor_room, _, seq_text = rest.rpartition(":")
    if kind != "m" or not (seq_text.isascii() and seq_text.isdigit()) or len(seq_text) > 18:
        raise BadUserInput("Malformed cursor.")
    if cursor_room != str(room_id):
        raise BadUserInput("That cursor belongs to another room.")
    return int(seq_text)


def encode_room_cursor(room: RoomView) -> str:
    """The opaque position of a room in a user's list (recent activity, then id)."""
    at = room.last_activity_at.isoformat() if room.last_activity_at else ""
    return _b64encode(f"r:{at}|{room.id}")


def decode_room_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (last activity, id) a room cursor points at; BAD_USER_INPUT when malformed."""
    if len(cursor) > 200:
        raise BadUserInput("Malformed cursor.")
    kind, _, rest = _b64decode(cursor).partition(":")
    at_text, _, id_text = rest.partition("|")
    try:
        if kind != "r":
            raise ValueError(kind)
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError(at_text)
        # In UTC here, as stored: an offset that carries the time past year 1 or 9999
        # (0001-01-01T00:00:00+14:00) overflows now, not later inside the database driver.
        return at.astimezone(UTC), uuid.UUID(id_text)
    except (ValueError, OverflowError) as error:
        raise BadUserInput("Malformed cursor.") from error
