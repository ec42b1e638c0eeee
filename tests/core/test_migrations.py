"""Migrations keep what existed working: data written at an older revision, then upgraded."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import make_url

from api.chat import service as chat
from api.core.db import Database, alembic_config
from api.core.errors import Conflict
from api.core.pubsub import PubSub
from api.core.security import derive_keys
from api.core.tasks import Unfinished
from api.users import service as users
from api.users.names import legacy_name_key
from api.users.passwords import PasswordHasher
from api.users.views import UserView

OLD_DIRECT_ROOM_NAMESPACE = uuid.UUID("6f1c2a3e-9d7b-5c4e-8a21-3b0f5e7d9c11")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

USERS = sa.table(
    "users",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("name_key", sa.String()),
    sa.column("password_hash", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
ROOMS = sa.table(
    "rooms",
    sa.column("id", sa.Uuid()),
    sa.column("kind", sa.String()),
    sa.column("last_seq", sa.BigInteger()),
    sa.column("last_activity_at", sa.DateTime(timezone=True)),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
MEMBERS = sa.table("room_members", sa.column("room_id", sa.Uuid()), sa.column("user_id", sa.Uuid()))
MESSAGES = sa.table(
    "messages",
    sa.column("room_id", sa.Uuid()),
    sa.column("seq", sa.BigInteger()),
    sa.column("sender_id", sa.Uuid()),
    sa.column("type", sa.String()),
    sa.column("data", sa.Text()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


@pytest.fixture
async def empty_database(tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables: a SQLite file, or a fresh PostgreSQL database."""
    base = os.environ.get("TEST_DATABASE_URL", "")
    if not base:
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"chat_migration_{uuid.uuid4().hex[:12]}"
    admin = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.close()


async def upgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


def user(name: str) -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "name": name,
        "name_key": name.casefold(),
        "password_hash": "pbkdf2_sha256$1000$c2FsdA$aGFzaA",
        "created_at": NOW,
    }


async def test_a_direct_room_made_before_0004_keeps_its_id_its_place_and_its_history(
    empty_database: str,
) -> None:
    await upgrade(empty_database, "0003")
    alice, bob = user("alice"), user("bob")
    low, high = sorted((alice["id"], bob["id"]))  # type: ignore[type-var]
    old_id = uuid.uuid5(OLD_DIRECT_ROOM_NAMESPACE, f"{low}:{high}")
    db = Database(empty_database, pool_size=2)
    try:
        async with db.write() as connection:
            await connection.execute(USERS.insert(), [alice, bob])
            await connection.execute(
                ROOMS.insert().values(
                    id=old_id, kind="direct", last_seq=1, last_activity_at=NOW, created_at=NOW
                )
            )
            await connection.execute(
                MEMBERS.insert(), [{"room_id": old_id, "user_id": u["id"]} for u in (alice, bob)]
            )
            await connection.execute(
                MESSAGES.insert().values(
                    room_id=old_id,
                    seq=1,
                    sender_id=alice["id"],
                    type="text",
                    data="before",
                    created_at=NOW,
                )
            )
    finally:
        await db.dispose()

    await upgrade(empty_database, "head")

    db = Database(empty_database, pool_size=2)
    await db.start()
    pubsub = PubSub("memory://")
    await pubsub.connect()
    try:
        alice_view = UserView(id=alice["id"], name="alice", created_at=NOW)  # type: ignore[arg-type]
        bob_view = UserView(id=bob["id"], name="bob", created_at=NOW)  # type: ignore[arg-type]
        room = await chat.open_direct_room(db=db, me=bob_view, with_name="alice")
        assert room.id == old_id
        # Each member's copy of the room's last activity was filled in (0005): the room is in
        # both lists, where it stood.
        for member in (alice_view, bob_view):
            listed = await chat.list_rooms(db=db, user=member)
            assert [(r.id, r.last_activity_at) for r in listed.rooms] == [(old_id, NOW)]
        sent = await chat.send_direct_message(
            db=db,
            pubsub=pubsub,
            unfinished=Unfinished(),
            sender=alice_view,
            to="bob",
            data="after",
        )
        assert (sent.room_id, sent.seq) == (old_id, 2)
    finally:
        await pubsub.disconnect()
        await db.dispose()


async def test_accounts_made_before_0006_keep_working_and_block_their_lookalikes(
    empty_database: str,
) -> None:
    await upgrade(empty_database, "0005")
    # Names the old rules (NFKC, isalpha) accepted: one PRECIS refuses (a Hangul filler
    # inside), and two that look alike, the Cyrillic one made later.
    old = [
        {**user("alice"), "created_at": NOW},
        {**user("\u0430lice"), "created_at": NOW.replace(hour=13)},
        {**user("al\u1160ice"), "created_at": NOW},
    ]
    for row in old:
        row["name_key"] = legacy_name_key(str(row["name"]))
    db = Database(empty_database, pool_size=2)
    try:
        async with db.write() as connection:
            await connection.execute(USERS.insert(), old)
    finally:
        await db.dispose()

    await upgrade(empty_database, "head")

    db = Database(empty_database, pool_size=2)
    await db.start()
    try:
        for row in old:
            found = await users.find_user_by_name(db=db, name=str(row["name"]))
            assert found is not None and found.id == row["id"], row["name"]
        keys = derive_keys(b"k" * 32)
        for lookalike in ("ALICE", "a1ice", "\u04301ice"):
            with pytest.raises(Conflict):
                await users.sign_up(
                    db=db,
                    hasher=PasswordHasher(pepper=keys.pepper),
                    keys=keys,
                    name=lookalike,
                    password="correct horse battery",
                    iterations=1000,
                    ttl=NOW - NOW.replace(hour=11),
                )
    finally:
        await db.dispose()


async def test_messages_made_before_0007_become_the_posted_entries_of_their_rooms_log(
    empty_database: str,
) -> None:
    await upgrade(empty_database, "0006")
    alice, bob = user("alice"), user("bob")
    room_id = uuid.uuid4()
    db = Database(empty_database, pool_size=2)
    try:
        async with db.write() as connection:
            await connection.execute(USERS.insert(), [alice, bob])
            await connection.execute(
                ROOMS.insert().values(
                    id=room_id, kind="direct", last_seq=2, last_activity_at=NOW, created_at=NOW
                )
            )
            await connection.execute(
                MEMBERS.insert(), [{"room_id": room_id, "user_id": u["id"]} for u in (alice, bob)]
            )
            await connection.execute(
                MESSAGES.insert(),
                [
                    {
                        "room_id": room_id,
                        "seq": seq,
                        "sender_id": sender["id"],
                        "type": "text",
                        "data": f"old {seq}",
                        "created_at": NOW,
                    }
                    for seq, sender in ((1, alice), (2, bob))
                ],
            )
    finally:
        await db.dispose()

    await upgrade(empty_database, "head")

    db = Database(empty_database, pool_size=2)
    await db.start()
    try:
        bob_view = UserView(id=bob["id"], name="bob", created_at=NOW)  # type: ignore[arg-type]
        log = await chat.list_events(db=db, user=bob_view, room_id=room_id, first=10)
        assert [
            (e.kind, e.seq, e.actor.name, e.message and e.message.data) for e in log.events
        ] == [
            ("posted", 1, "alice", "old 1"),
            ("posted", 2, "bob", "old 2"),
        ]
        room = await chat.get_room(db=db, user=bob_view, room_id=room_id)
        assert room is not None
        # Members of old rooms are MEMBERs who joined when the room was made.
        assert sorted((m.user.name, m.role, m.joined_at) for m in room.members) == [
            ("alice", "MEMBER", NOW),
            ("bob", "MEMBER", NOW),
        ]
        assert room.last_seq == 2
    finally:
        await db.dispose()
