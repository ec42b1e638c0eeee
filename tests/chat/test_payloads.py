"""Pub/sub payloads of messages: text through a broker, the view itself within a process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from api.chat.views import MessageView, UserView


def message(client_message_id: str | None = "c-1") -> MessageView:
    sender = UserView(id=uuid.uuid4(), name="alice", created_at=datetime(2026, 1, 2, tzinfo=UTC))
    return MessageView(
        id=7,
        room_id=uuid.uuid4(),
        seq=3,
        sender=sender,
        type="text",
        data="héllo \U0001f600",
        created_at=datetime.now(UTC),
        client_message_id=client_message_id,
    )


def test_a_payload_parsed_from_its_text_equals_the_message() -> None:
    for view in (message(), message(None)):
        text = str(view.to_json())  # as it comes back from Redis: plain text
        assert type(text) is str
        assert MessageView.from_json(text) == view


def test_in_process_the_payload_gives_back_the_message_without_parsing() -> None:
    view = message()
    payload = view.to_json()
    assert MessageView.from_json(payload) is view
    assert str(payload) == view._encode()
