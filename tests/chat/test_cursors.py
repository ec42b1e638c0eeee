"""Every cursor decoder, fuzzed through the real server: any `after`/`before` a client sends
gives a valid page or BAD_USER_INPUT, never anything else."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chat.conftest import History
from tests.support import GraphQLClient

ROOMS = "query Rooms($after: String) { rooms(first: 3, after: $after) { edges { cursor } } }"
MESSAGES_AFTER = """
query After($roomId: ID!, $cursor: String) {
  messages(roomId: $roomId, first: 3, after: $cursor) { edges { cursor } }
}
"""
MESSAGES_BEFORE = """
query Before($roomId: ID!, $cursor: String) {
  messages(roomId: $roomId, last: 3, before: $cursor) { edges { cursor } }
}
"""

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


# Timestamps with any offset the format allows, up to the edges of what datetime holds.
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
timestamps = st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
    st.one_of(
        # The ends of time, where an offset carries the moment out of range in UTC.
        st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)]),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    ),
    offsets,
)
ids = st.one_of(st.uuids().map(str), st.text(max_size=40))
room_cursors = st.one_of(
    st.text(max_size=300),
    st.builds(lambda at, id_: b64(f"r:{at}|{id_}"), st.one_of(timestamps, st.text()), ids),
    st.builds(b64, st.text(max_size=200)),
)


def message_cursors(room_id: str) -> st.SearchStrategy[str]:
    seqs = st.one_of(
        st.integers(min_value=-(10**20), max_value=10**20).map(str),
        st.text(max_size=25),
    )
    rooms = st.one_of(st.just(room_id), ids)
    return st.one_of(
        st.text(max_size=300),
        st.builds(lambda room, seq: b64(f"m:{room}:{seq}"), rooms, seqs),
        st.builds(b64, st.text(max_size=200)),
    )


def assert_page_or_bad_user_input(body: dict[str, Any], field: str) -> None:
    if body.get("errors"):
        codes = [error["extensions"]["code"] for error in body["errors"]]
        assert codes == ["BAD_USER_INPUT"], body
        assert body["data"] is None
        return
    assert isinstance(body["data"][field]["edges"], list), body


@pytest.mark.parametrize(
    "cursor",
    [
        "MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMA",
        b64("r:0001-01-01T00:00:00+14:00|" + str(uuid.UUID(int=0))),
    ],
    ids=["not a room cursor", "year 1 at +14:00"],
)
async def test_a_room_cursor_whose_time_overflows_in_utc_is_bad_user_input(
    client: GraphQLClient, cursor: str
) -> None:
    await client.sign_up()
    error = await client.error(ROOMS, {"after": cursor})
    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_room_cursor_at_the_far_ends_of_time_gives_a_page(client: GraphQLClient) -> None:
    await client.sign_up()
    for moment in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)):
        cursor = b64(f"r:{moment.isoformat()}|{uuid.UUID(int=0)}")
        assert (await client.data(ROOMS, {"after": cursor}))["rooms"]["edges"] == []


@FUZZ
@given(cursor=room_cursors)
async def test_any_rooms_after_cursor_gives_a_page_or_bad_user_input(
    long_history: History, cursor: str
) -> None:
    body = await long_history.pair.alice.post(ROOMS, {"after": cursor})
    assert_page_or_bad_user_input(body, "rooms")


@FUZZ
@given(data=st.data())
async def test_any_messages_cursor_gives_a_page_or_bad_user_input(
    long_history: History, data: st.DataObject
) -> None:
    cursor = data.draw(message_cursors(long_history.room_id))
    document = data.draw(st.sampled_from([MESSAGES_AFTER, MESSAGES_BEFORE]))
    body = await long_history.pair.alice.post(
        document, {"roomId": long_history.room_id, "cursor": cursor}
    )
    assert_page_or_bad_user_input(body, "messages")
