"""The chat service below GraphQL: direct pairs, cursors, and the SQL that reads history."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from api.chat.service import direct_pair
from api.chat.views import decode_message_cursor, encode_message_cursor
from api.core.errors import BadUserInput
from tests.chat.conftest import History
from tests.support import RunningServer, captured_statements

MESSAGES = """
query Messages($roomId: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  messages(roomId: $roomId, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { seq } }
  }
}
"""
PAGE_SIZE = 7


def captured_sql(server: RunningServer) -> Any:
    """Every statement (with its parameters) the server runs inside the block."""
    return captured_statements(server.app.state.chat.db)


def _skips_rows(statement: str, parameters: Any, *, sqlite: bool) -> bool:
    """Whether a statement makes the database read and discard rows with OFFSET."""
    if "OFFSET" not in statement.upper():
        return False
    # SQLAlchemy's SQLite dialect renders every LIMIT as "LIMIT ? OFFSET ?" with an offset of 0.
    return not (sqlite and statement.rstrip().endswith("OFFSET ?") and parameters[-1] == 0)


# --- direct rooms --------------------------------------------------------------------------------


def test_a_direct_pair_is_the_same_whichever_user_asks() -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()

    assert direct_pair(alice, bob) == direct_pair(bob, alice)
    assert direct_pair(alice, bob) == tuple(sorted((alice, bob)))


# --- cursors ----------------------------------------------------------------------------------


def test_a_message_cursor_decodes_to_its_seq_only_in_its_own_room() -> None:
    room, other_room = uuid.uuid4(), uuid.uuid4()
    cursor = encode_message_cursor(room, 42)

    assert decode_message_cursor(cursor, room_id=room) == 42
    with pytest.raises(BadUserInput):
        decode_message_cursor(cursor, room_id=other_room)


def test_message_cursors_are_opaque_and_url_safe() -> None:
    room = uuid.uuid4()

    cursors = [encode_message_cursor(room, seq) for seq in (1, 2, 10**12)]

    for cursor in cursors:
        assert str(room) not in cursor
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor), cursor
    assert len(set(cursors)) == 3


# --- keyset, never OFFSET -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "size_name", "cursor_seq", "comparison", "expected"),
    [
        ("before", "last", 20, "<", list(range(13, 20))),
        ("after", "first", 200, ">", list(range(201, 208))),
    ],
    ids=["back-in-time", "forward"],
)
async def test_a_deep_history_page_is_read_by_seq_keyset_not_offset(
    server: RunningServer,
    long_history: History,
    direction: str,
    size_name: str,
    cursor_seq: int,
    comparison: str,
    expected: list[int],
) -> None:
    client, room_id = long_history.pair.alice, long_history.room_id
    oldest = (await client.data(MESSAGES, {"roomId": room_id, "first": 100}))["messages"]
    newest = (await client.data(MESSAGES, {"roomId": room_id, "last": 100}))["messages"]
    by_seq = {edge["node"]["seq"]: edge["cursor"] for edge in oldest["edges"] + newest["edges"]}
    variables = {"roomId": room_id, size_name: PAGE_SIZE, direction: by_seq[cursor_seq]}
    sqlite = server.app.state.chat.db.is_sqlite

    with captured_sql(server) as statements:
        page = (await client.data(MESSAGES, variables))["messages"]

    assert [edge["node"]["seq"] for edge in page["edges"]] == expected
    assert statements, "no SQL captured"
    offending = [s for s, p in statements if _skips_rows(s, p, sqlite=sqlite)]
    assert offending == []
    history_reads = [(s, p) for s, p in statements if re.search(r"FROM messages\b", s)]
    assert len(history_reads) == 1, statements
    statement, parameters = history_reads[0]
    assert re.search(rf"messages\.seq\s*{comparison}", statement), statement
    assert re.search(r"ORDER BY messages\.seq", statement), statement
    assert "LIMIT" in statement.upper()
    assert cursor_seq in tuple(parameters)
    # One row beyond the page tells whether there is more.
    assert PAGE_SIZE + 1 in tuple(parameters)
