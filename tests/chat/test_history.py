"""History: `messages` is a keyset Relay connection, oldest first within a page, at most 100."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import pytest

from tests.chat.conftest import History, Pair, SignUp, send_numbered_messages
from tests.support import GraphQLClient

MESSAGES = """
query Messages($roomId: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  messages(roomId: $roomId, first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { id seq data cursor roomId } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
SEND_MESSAGE = """
mutation Send($roomId: ID!, $data: String!) {
  sendMessage(roomId: $roomId, data: $data) { seq cursor }
}
"""

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
EMPTY_PAGE_INFO = {
    "hasNextPage": False,
    "hasPreviousPage": False,
    "startCursor": None,
    "endCursor": None,
}


async def _page(client: GraphQLClient, room_id: str, **arguments: Any) -> dict[str, Any]:
    connection: dict[str, Any] = (await client.data(MESSAGES, {"roomId": room_id, **arguments}))[
        "messages"
    ]
    return connection


def _seqs(connection: dict[str, Any]) -> list[int]:
    return [edge["node"]["seq"] for edge in connection["edges"]]


def _forge(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _assert_edges_are_consistent(connection: dict[str, Any], room_id: str) -> None:
    edges = connection["edges"]
    page_info = connection["pageInfo"]
    for edge in edges:
        assert edge["cursor"] == edge["node"]["cursor"]
        assert edge["node"]["roomId"] == room_id
        assert edge["node"]["data"] == f"m{edge['node']['seq']}"
    seqs = _seqs(connection)
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert page_info["startCursor"] == (edges[0]["cursor"] if edges else None)
    assert page_info["endCursor"] == (edges[-1]["cursor"] if edges else None)


def _allowed(elements_exist: bool) -> set[bool]:
    """The values Relay allows for the flag of the direction a page is not walking.

    The spec lets a server answer false there even when elements exist ("if it can
    efficiently determine"), but never true when nothing is there.
    """
    return {True, False} if elements_exist else {False}


# --- defaults, sizes ----------------------------------------------------------------------------


async def test_with_neither_first_nor_last_the_newest_fifty_come_oldest_first(
    long_history: History,
) -> None:
    connection = await _page(long_history.pair.alice, long_history.room_id)

    newest = range(long_history.length - DEFAULT_PAGE_SIZE + 1, long_history.length + 1)
    assert _seqs(connection) == list(newest)
    assert connection["pageInfo"]["hasPreviousPage"] is True
    assert connection["pageInfo"]["hasNextPage"] is False
    _assert_edges_are_consistent(connection, long_history.room_id)


async def test_a_page_holds_at_most_one_hundred_messages(long_history: History) -> None:
    forward = await _page(long_history.pair.bob, long_history.room_id, first=MAX_PAGE_SIZE)
    backward = await _page(long_history.pair.bob, long_history.room_id, last=MAX_PAGE_SIZE)

    assert _seqs(forward) == list(range(1, MAX_PAGE_SIZE + 1))
    assert _seqs(backward) == list(
        range(long_history.length - MAX_PAGE_SIZE + 1, long_history.length + 1)
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"first": MAX_PAGE_SIZE + 1},
        {"last": MAX_PAGE_SIZE + 1},
        {"first": -1},
        {"last": -1},
        {"first": 10, "last": 10},
        {"first": 0, "last": 0},
    ],
    ids=["first-101", "last-101", "first-negative", "last-negative", "first-and-last", "zeros"],
)
async def test_a_bad_page_size_is_bad_user_input(
    long_history: History, arguments: dict[str, int]
) -> None:
    error = await long_history.pair.alice.error(
        MESSAGES, {"roomId": long_history.room_id, **arguments}
    )

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_first_zero_returns_no_edges_and_says_more_follow(long_history: History) -> None:
    connection = await _page(long_history.pair.alice, long_history.room_id, first=0)

    assert connection["edges"] == []
    assert connection["pageInfo"]["hasNextPage"] is True
    assert connection["pageInfo"]["hasPreviousPage"] is False
    assert connection["pageInfo"]["startCursor"] is None
    assert connection["pageInfo"]["endCursor"] is None


async def test_last_zero_returns_no_edges_and_says_more_precede(long_history: History) -> None:
    connection = await _page(long_history.pair.alice, long_history.room_id, last=0)

    assert connection["edges"] == []
    assert connection["pageInfo"]["hasPreviousPage"] is True
    assert connection["pageInfo"]["hasNextPage"] is False


@pytest.mark.parametrize(
    "arguments",
    [{}, {"first": 10}, {"last": 10}, {"first": 0}],
    ids=["default", "first", "last", "first-zero"],
)
async def test_an_empty_room_has_no_edges_and_no_neighbouring_pages(
    pair: Pair, arguments: dict[str, int]
) -> None:
    connection = await _page(pair.alice, pair.room_id, **arguments)

    assert connection == {"edges": [], "pageInfo": EMPTY_PAGE_INFO}


# --- walking the whole history ----------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 23, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE])
async def test_walking_forward_with_first_and_after_reproduces_the_whole_history(
    long_history: History, size: int
) -> None:
    client, total = long_history.pair.alice, long_history.length
    seen: list[int] = []
    after = None
    while True:
        connection = await _page(client, long_history.room_id, first=size, after=after)
        page = _seqs(connection)
        page_info = connection["pageInfo"]
        _assert_edges_are_consistent(connection, long_history.room_id)
        assert len(page) == min(size, total - len(seen))
        assert page_info["hasNextPage"] is (page[-1] < total)
        assert page_info["hasPreviousPage"] in _allowed(elements_exist=after is not None)
        seen.extend(page)
        if not page_info["hasNextPage"]:
            break
        after = page_info["endCursor"]
        assert len(seen) < total, "hasNextPage stays true after the last message"

    assert seen == list(range(1, total + 1))


@pytest.mark.parametrize("size", [7, 23, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE])
async def test_walking_backward_with_last_and_before_reproduces_the_whole_history(
    long_history: History, size: int
) -> None:
    client, total = long_history.pair.bob, long_history.length
    pages: list[list[int]] = []
    before = None
    while True:
        connection = await _page(client, long_history.room_id, last=size, before=before)
        page = _seqs(connection)
        page_info = connection["pageInfo"]
        _assert_edges_are_consistent(connection, long_history.room_id)
        assert len(page) == min(size, total - sum(map(len, pages)))
        assert page_info["hasPreviousPage"] is (page[0] > 1)
        assert page_info["hasNextPage"] in _allowed(elements_exist=before is not None)
        pages.append(page)
        if not page_info["hasPreviousPage"]:
            break
        before = page_info["startCursor"]
        assert sum(map(len, pages)) < total, "hasPreviousPage stays true before the first"

    assert [seq for page in reversed(pages) for seq in page] == list(range(1, total + 1))


async def test_first_and_last_stay_between_after_and_before(long_history: History) -> None:
    client, room_id = long_history.pair.alice, long_history.room_id
    window = await _page(client, room_id, first=20)
    after, before = window["edges"][9]["cursor"], window["edges"][19]["cursor"]  # seqs 10, 20

    head = await _page(client, room_id, first=5, after=after, before=before)
    tail = await _page(client, room_id, last=5, after=after, before=before)
    whole = await _page(client, room_id, first=MAX_PAGE_SIZE, after=after, before=before)
    whole_backward = await _page(client, room_id, last=MAX_PAGE_SIZE, after=after, before=before)

    assert _seqs(head) == [11, 12, 13, 14, 15]
    assert head["pageInfo"]["hasNextPage"] is True
    assert _seqs(tail) == [15, 16, 17, 18, 19]
    assert tail["pageInfo"]["hasPreviousPage"] is True
    assert _seqs(whole) == list(range(11, 20))
    assert whole["pageInfo"]["hasNextPage"] is False
    assert _seqs(whole_backward) == list(range(11, 20))
    assert whole_backward["pageInfo"]["hasPreviousPage"] is False


async def test_paging_after_the_newest_message_is_empty_until_a_new_one_arrives(
    pair: Pair,
) -> None:
    await send_numbered_messages([pair.alice], pair.room_id, 3)
    newest = await _page(pair.alice, pair.room_id)
    end = newest["pageInfo"]["endCursor"]

    caught_up = await _page(pair.alice, pair.room_id, first=10, after=end)
    await pair.bob.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": "m4"})
    later = await _page(pair.alice, pair.room_id, first=10, after=end)

    assert caught_up["edges"] == []
    assert caught_up["pageInfo"]["hasNextPage"] is False
    assert _seqs(later) == [4]
    assert later["pageInfo"]["hasNextPage"] is False


async def test_the_cursor_of_a_sent_message_is_its_edge_cursor(pair: Pair) -> None:
    sent = [
        (await pair.alice.data(SEND_MESSAGE, {"roomId": pair.room_id, "data": f"m{n}"}))[
            "sendMessage"
        ]
        for n in (1, 2, 3)
    ]

    connection = await _page(pair.bob, pair.room_id)

    assert [edge["cursor"] for edge in connection["edges"]] == [m["cursor"] for m in sent]
    after_first = await _page(pair.bob, pair.room_id, first=10, after=sent[0]["cursor"])
    assert _seqs(after_first) == [2, 3]


# --- cursors and access -------------------------------------------------------------------------

MALFORMED_CURSORS = {
    "garbage": "not a cursor!",
    "base64-junk": _forge("hello world, not a cursor"),
    "wrong-kind": _forge(f"r:2024-01-01T00:00:00+00:00|{uuid.uuid4()}"),
    "seq-not-a-number": "{room}:abc",
    "seq-negative": "{room}:-1",
    "seq-missing": "{room}:",
    "seq-too-big": "{room}:" + "9" * 40,
    "too-long": "A" * 1000,
    "empty": "",
}


def _malformed(name: str, room_id: str) -> str:
    value = MALFORMED_CURSORS[name]
    return _forge("m:" + value.format(room=room_id)) if value.startswith("{room}") else value


@pytest.mark.parametrize("direction", ["after", "before"])
@pytest.mark.parametrize("name", list(MALFORMED_CURSORS))
async def test_a_malformed_cursor_is_bad_user_input(
    long_history: History, name: str, direction: str
) -> None:
    cursor = _malformed(name, long_history.room_id)
    size = "first" if direction == "after" else "last"

    error = await long_history.pair.alice.error(
        MESSAGES, {"roomId": long_history.room_id, size: 5, direction: cursor}
    )

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_cursor_with_a_non_ascii_digit_is_bad_user_input(long_history: History) -> None:
    cursor = _forge(f"m:{long_history.room_id}:\u00b2")

    error = await long_history.pair.alice.error(
        MESSAGES, {"roomId": long_history.room_id, "first": 5, "after": cursor}
    )

    assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_cursor_from_another_room_is_bad_user_input(
    long_history: History, sign_up: SignUp
) -> None:
    alice = long_history.pair.alice
    carol = await sign_up()
    assert carol.user is not None
    other = await alice.data(
        """mutation($to: String!) { sendDirectMessage(to: $to, data: "m1") { roomId cursor } }""",
        {"to": carol.user["name"]},
    )
    foreign_cursor = other["sendDirectMessage"]["cursor"]

    for size, direction in (("first", "after"), ("last", "before")):
        error = await alice.error(
            MESSAGES, {"roomId": long_history.room_id, size: 5, direction: foreign_cursor}
        )
        assert error["extensions"]["code"] == "BAD_USER_INPUT"


async def test_an_outsider_is_forbidden_to_read_the_history(
    long_history: History, sign_up: SignUp
) -> None:
    outsider = await sign_up()

    result = await outsider.post(MESSAGES, {"roomId": long_history.room_id})

    assert result["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert result["data"] is None


async def test_an_outsider_holding_a_valid_cursor_is_still_forbidden(
    long_history: History, sign_up: SignUp
) -> None:
    outsider = await sign_up()
    cursor = (await _page(long_history.pair.alice, long_history.room_id, first=1))["edges"][0][
        "cursor"
    ]

    error = await outsider.error(
        MESSAGES, {"roomId": long_history.room_id, "first": 5, "after": cursor}
    )

    assert error["extensions"]["code"] == "FORBIDDEN"


async def test_the_history_of_an_unknown_room_is_not_found(sign_up: SignUp) -> None:
    me = await sign_up()

    error = await me.error(MESSAGES, {"roomId": str(uuid.uuid4())})

    assert error["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("room_id", ["not-a-room", "", "0"])
async def test_the_history_of_a_malformed_room_id_is_bad_user_input(
    sign_up: SignUp, room_id: str
) -> None:
    me = await sign_up()

    error = await me.error(MESSAGES, {"roomId": room_id})

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
