"""Pub/sub payloads of log entries: text through a broker, the view itself within a process."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from api.chat.views import (
    POSTED,
    REACTION_ADDED,
    EventView,
    MessageView,
    ReactionView,
    UserView,
)

ALICE = UserView(id=uuid.uuid4(), name="alice", created_at=datetime(2026, 1, 2, tzinfo=UTC))


def posted(client_message_id: str | None = "c-1") -> EventView:
    room_id = uuid.uuid4()
    message = MessageView(
        id=7,
        room_id=room_id,
        seq=3,
        sender=ALICE,
        type="text",
        data="héllo \U0001f600",
        created_at=datetime.now(UTC),
        client_message_id=client_message_id,
        edited_at=datetime.now(UTC),
        reactions=(ReactionView("👍", (ALICE.id, uuid.uuid4())),),
    )
    return EventView(
        room_id=room_id,
        seq=3,
        kind=POSTED,
        actor=ALICE,
        created_at=message.created_at,
        message=message,
        message_id=7,
    )


def reaction() -> EventView:
    return EventView(
        room_id=uuid.uuid4(),
        seq=9,
        kind=REACTION_ADDED,
        actor=ALICE,
        created_at=datetime.now(UTC),
        message_id=7,
        detail="🎉",
    )


def test_a_payload_parsed_from_its_text_equals_the_entry() -> None:
    for view in (posted(), posted(None), reaction()):
        text = str(view.payload())  # as it comes back from Redis: plain text
        assert type(text) is str
        assert EventView.from_json(text) == view


def test_in_process_the_payload_gives_back_the_entry_without_parsing() -> None:
    view = posted()
    payload = view.payload()
    assert EventView.from_json(payload) is view
    # Encoded only when asked (a broker's message), and only once.
    assert payload._text is None
    text = str(payload)
    assert text == view.to_json()
    assert str(payload) is text
