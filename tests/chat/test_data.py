"""What the tables guarantee on their own: history outlives its senders."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import IntegrityError

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
