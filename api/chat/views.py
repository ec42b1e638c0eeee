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

__all__ = ["MessagePage", "MessageView", "RoomPage", "RoomView", "UserView"]


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

    @property
    def cursor(self) -> str:
        return encode_message_cursor(self.room_id, self.seq)

    def to_json(self) -> str:
        """The pub/sub payload: everything a subscriber needs, so delivery reads no database."""
        return _Payload(self._encode(), self)

    def _encode(self) -> str:
        return orjson.dumps(
            {
                "id": self.id,
                "room": str(self.room_id),
                "seq": self.seq,
                "sender": [
                    str(self.sender.id),
                    self.sender.name,
                    self.sender.created_at.isoformat(),
                ],
                "type": self.type,
                "data": self.data,
                "at": self.created_at.isoformat(),
                "cmid": self.client_message_id,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> MessageView:
        """Parse a pub/sub payload."""
        if isinstance(text, _Payload):
            return text.message
        raw: dict[str, Any] = orjson.loads(text)
        sender_id, sender_name, sender_created = raw["sender"]
        return cls(
            id=raw["id"],
            room_id=uuid.UUID(raw["room"]),
            seq=raw["seq"],
            sender=UserView(
                id=uuid.UUID(sender_id),
                name=sender_name,
                created_at=datetime.fromisoformat(sender_created),
            ),
            type=raw["type"],
            data=raw["data"],
            created_at=datetime.fromisoformat(raw["at"]),
            client_message_id=raw["cmid"],
        )


class _Payload(str):
    """A payload that still holds the view it was encoded from. In-process pub/sub hands the
    same object to the subscriber, which then takes the view instead of parsing the text again
    (two UUIDs and two timestamps per message); through Redis it is plain text. (orjson refuses
    str subclasses: whatever else reads a payload parses str(payload).)"""

    message: MessageView

    def __new__(cls, text: str, message: MessageView) -> _Payload:
        payload = super().__new__(cls, text)
        payload.message = message
        return payload


@dataclass(frozen=True, slots=True)
class RoomView:
    id: uuid.UUID
    kind: str
    members: list[UserView]
    last_message: MessageView | None
    last_activity_at: datetime | None

    @property
    def name(self) -> str:
        """For a direct room: the two member names, sorted, joined by ", "."""
        return ", ".join(sorted(member.name for member in self.members))


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


def _b64encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _b64decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise BadUserInput("Malformed cursor.") from error


def encode_message_cursor(room_id: uuid.UUID, seq: int) -> str:
    """The opaque position of a message: the same in edges, Message.cursor and messageAdded."""
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
