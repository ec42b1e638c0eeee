"""What the tables guarantee on their own: history outlives its senders."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from api.chat import store
from api.core.db import Database
from api.users.store import USERS
from tests.chat.conftest import Pair, id_of
from tests.support import send


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The run's database, opened by the test to look at and change rows directly."""
    database = Database(database_url, pool_size=2)
    yield database
    await database.dispose()


async def test_deleting_a_user_who_sent_messages_is_refused_and_erases_nothing(
    pair: Pair, db: Database
) -> None:
    await send(pair.alice, pair.room_id, "from alice")
    await send(pair.bob, pair.room_id, "from bob")
    alice_id = uuid.UUID(id_of(pair.alice))
    with pytest.raises(IntegrityError):
        async with db.write() as connection:
            await connection.execute(USERS.delete().where(USERS.c.id == alice_id))
    history = await pair.bob.data(
        "query ($r: ID!) { messages(roomId: $r) { edges { node { seq data } } } }",
        {"r": pair.room_id},
    )
    assert [edge["node"] for edge in history["messages"]["edges"]] == [
        {"seq": 1, "data": "from alice"},
        {"seq": 2, "data": "from bob"},
    ]


# --- the room list's plan ---------------------------------------------------------------------

ROOM_LIST_INDEX = "ix_room_members_activity"
MANY_ROOMS = 3_000


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("page", ["first", "after"])
async def test_the_room_list_reads_the_users_rooms_in_index_order_without_sorting_them(
    pair: Pair, db: Database, page: str
) -> None:
    await send(pair.alice, pair.room_id, "hello")
    alice_id = uuid.UUID(id_of(pair.alice))
    after = (datetime(2026, 1, 1, tzinfo=UTC), uuid.UUID(int=2**127))
    if db.is_sqlite:
        async with db.read() as connection:
            compiled = store.rooms_of_sqlite(
                alice_id, after if page == "after" else None, 21
            ).compile(dialect=connection.dialect)
            # The plan does not depend on the values; the statement's own placeholders stay.
            rows = (
                await connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + str(compiled), (None,) * len(compiled.positiontup or ())
                )
            ).all()
        details = [row[-1] for row in rows]
        assert any(ROOM_LIST_INDEX in detail for detail in details), details
        assert not any("TEMP B-TREE" in detail for detail in details), details
        return
    await db.start()
    assert db.pg is not None
    async with db.pg.connection() as connection:
        transaction = connection.transaction()
        await transaction.start()
        try:
            plan = await _pg_plan(connection, alice_id, after if page == "after" else None)
        finally:
            await transaction.rollback()  # the thousands of rooms below go with it
    nodes = list(_plan_nodes(plan))
    assert any(node.get("Index Name") == ROOM_LIST_INDEX for node in nodes), plan
    # No sort of the rooms themselves. (Each room's newest message and its reactions are read
    # by LIMIT 1 / per-message subqueries, which the planner may sort while those tables are
    # nearly empty, as here; that sorts one room's rows, never the list.)
    room_sorts = [
        node
        for node in nodes
        if node["Node Type"] in ("Sort", "Incremental Sort")
        and any("last_activity_at" in key or "room_id" in key for key in node["Sort Key"])
    ]
    assert room_sorts == [], plan


async def _pg_plan(
    connection: Any, user_id: uuid.UUID, after: tuple[datetime, uuid.UUID] | None
) -> dict[str, Any]:
    # Thousands of rooms for the user, so that the planner's choice is the one it makes for
    # a busy user, not for a nearly empty table.
    await connection.execute(
        """
        WITH made AS (
            INSERT INTO rooms (id, kind, last_seq, created_at, last_activity_at)
            SELECT gen_random_uuid(), 'group', 0, now(), now() - i * interval '1 second'
            FROM generate_series(1, $2::int) AS i
            RETURNING id, last_activity_at
        )
        INSERT INTO room_members (room_id, user_id, last_activity_at)
        SELECT id, $1, last_activity_at FROM made
        """,
        user_id,
        MANY_ROOMS,
    )
    await connection.execute("ANALYZE rooms, room_members")
    if after is None:
        explained = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) " + store.ROOMS_FIRST, user_id, 21
        )
    else:
        explained = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) " + store.ROOMS_AFTER, user_id, 21, *after
        )
    plan: dict[str, Any] = json.loads(explained)[0]["Plan"]
    return plan
