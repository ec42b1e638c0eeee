"""A send's response and its live delivery take one Message object (SharedMessageTypes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from api.chat.views import MessageView
from api.users.views import UserView
from schema.chat import MessageType, SharedMessageTypes

ALICE = UserView(id=uuid.uuid4(), name="alice", created_at=datetime(2026, 1, 2, tzinfo=UTC))


def _message(seq: int) -> MessageView:
    return MessageView(
        id=seq,
        room_id=uuid.uuid4(),
        seq=seq,
        sender=ALICE,
        type="text",
        data=f"message {seq}",
        created_at=datetime.now(UTC),
        client_message_id=None,
    )


def test_the_same_view_converts_once_and_another_view_anew() -> None:
    convert = SharedMessageTypes()
    first, second = _message(1), _message(2)
    converted = convert(first)
    assert converted == MessageType.from_view(first)
    assert convert(first) is converted  # the delivery takes the response's object
    other = convert(second)
    assert other is not converted and other == MessageType.from_view(second)
    # An equal but distinct view (another send's) is converted anew, never mixed up.
    twin = _message(2)
    assert convert(twin) is not other
