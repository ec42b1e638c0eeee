"""The chat and account rules, tested on the services and stores alone: no HTTP, no uvicorn."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from api.chat import service as chat
from api.core.db import Database
from api.core.errors import BadUserInput, Forbidden, NotFound, Unauthenticated
from api.core.pubsub import PubSub
from api.core.security import Keys, derive_keys
from api.core.tasks import Unfinished
from api.users import service as users
from api.users.cache import SessionCache, TokenCache
from api.users.passwords import PasswordHasher
from api.users.views import UserView
from tests.support import captured_statements


@dataclass
class Parts:
    db: Database
    pubsub: PubSub
    keys: Keys
    hasher: PasswordHasher
    unfinished: Unfinished


@pytest.fixture
async def parts(database_url: str) -> AsyncIterator[Parts]:
    db = Database(database_url, pool_size=2)
    await db.start()
    pubsub = PubSub("memory://")
    await pubsub.connect()
    keys = derive_keys(b"rules-" + b"k" * 40)
    try:
        yield Parts(db, pubsub, keys, PasswordHasher(pepper=keys.pepper), Unfinished())
    finally:
        await pubsub.disconnect()
        await db.dispose()


async def new_user(parts: Parts) -> tuple[UserView, str]:
    issued = await users.sign_up(
        db=parts.db,
        hasher=parts.hasher,
        keys=parts.keys,
        name=f"r{uuid.uuid4().hex[:12]}",
        password="correct horse battery",
        iterations=1000,
        ttl=timedelta(days=3),
    )
    return issued.user, issued.cookie_value


async def send(parts: Parts, sender: UserView, room_id: uuid.UUID, **options: Any) -> Any:
    return await chat.send_message(
        db=parts.db,
        pubsub=parts.pubsub,
        unfinished=parts.unfinished,
        sender=sender,
        room_id=room_id,
        **{"data": "hi", **options},
    )


async def test_a_retried_client_message_id_returns_the_first_message_and_takes_no_seq(
    parts: Parts,
) -> None:
    alice, _ = await new_user(parts)
    bob, _ = await new_user(parts)
    room = await chat.open_direct_room(db=parts.db, me=alice, with_name=bob.name)
    first = await send(parts, alice, room.id, data="once", client_message_id="c-1")
    again = await send(parts, alice, room.id, data="once", client_message_id="c-1")
    after = await send(parts, alice, room.id, data="next")
    assert (again.id, again.seq) == (first.id, first.seq)
    assert after.seq == first.seq + 1


async def test_sending_to_a_room_of_others_is_forbidden_and_to_no_room_not_found(
    parts: Parts,
) -> None:
    alice, _ = await new_user(parts)
    bob, _ = await new_user(parts)
    mallory, _ = await new_user(parts)
    room = await chat.open_direct_room(db=parts.db, me=alice, with_name=bob.name)
    with pytest.raises(Forbidden):
        await send(parts, mallory, room.id)
    with pytest.raises(NotFound):
        await send(parts, mallory, uuid.uuid4())


@pytest.mark.parametrize(
    "options",
    [{"data": ""}, {"data": "x" * 4001}, {"data": "a\x00b"}, {"type": "9bad"}],
    ids=["empty", "too long", "NUL", "bad type"],
)
async def test_content_the_database_must_not_see_is_bad_user_input(
    parts: Parts, options: dict[str, Any]
) -> None:
    alice, _ = await new_user(parts)
    bob, _ = await new_user(parts)
    room = await chat.open_direct_room(db=parts.db, me=alice, with_name=bob.name)
    with pytest.raises(BadUserInput):
        await send(parts, alice, room.id, **options)


async def test_authenticating_a_cached_session_needs_no_database_round_trip(
    parts: Parts,
) -> None:
    alice, cookie = await new_user(parts)
    tokens, sessions = TokenCache(), SessionCache(ttl=5)
    options: dict[str, Any] = {
        "db": parts.db,
        "keys": parts.keys,
        "tokens": tokens,
        "sessions": sessions,
    }
    with captured_statements(parts.db) as first:
        auth = await users.authenticate(cookie_value=cookie, **options)
    assert auth.user.id == alice.id
    assert first, "the first authentication reads the session"
    with captured_statements(parts.db) as later:
        for _ in range(3):
            assert (await users.authenticate(cookie_value=cookie, **options)).user.id == alice.id
    assert later == []
    # Signing out drops the cached session at once.
    await users.sign_out(db=parts.db, sessions=sessions, session_id=auth.session.id)
    with pytest.raises(Unauthenticated):
        await users.authenticate(cookie_value=cookie, **options)
