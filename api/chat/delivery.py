"""Live delivery: each message exactly once, in seq order, to every open subscription.

The recipe (ARCHITECTURE.md, "Delivery without loss or duplicates"): subscribe to the channel
first, then read what is already stored, then follow live events, dropping seqs already
yielded. When a live seq jumps past the next expected one, or pub/sub says RESYNC (broker
reconnected, or this subscriber fell too far behind), the missing messages come from the
database, which is the source of truth.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from api.chat import service
from api.chat.constants import BACKLOG_CHUNK, room_channel, user_channel
from api.chat.views import MessageView, decode_message_cursor
from api.core.db import Database
from api.core.errors import BadUserInput
from api.core.pubsub import RESYNC, PubSub
from api.users.cache import UserDirectory

log = logging.getLogger(__name__)


async def _stored_after(
    db: Database,
    room_id: uuid.UUID,
    after_seq: int,
    up_to_seq: int | None = None,
    directory: UserDirectory | None = None,
) -> AsyncIterator[MessageView]:
    """Stored messages after a seq, in chunks so a long backlog never sits in memory at once."""
    while True:
        chunk = await service.read_messages_after(
            db=db,
            room_id=room_id,
            after_seq=after_seq,
            limit=BACKLOG_CHUNK,
            up_to_seq=up_to_seq,
            directory=directory,
        )
        for message in chunk:
            yield message
            after_seq = message.seq
        if len(chunk) < BACKLOG_CHUNK:
            return


async def follow_room(
    *,
    db: Database,
    pubsub: PubSub,
    user_id: uuid.UUID,
    room_id: uuid.UUID,
    after: str | None = None,
    directory: UserDirectory | None = None,
) -> AsyncGenerator[MessageView, None]:
    """A room's messages: everything after `after` (a cursor) first, then live ones.

    Without `after` the stream starts where the room stood when the request arrived, so a
    message sent once the subscription is in place is never taken for an older one.
    """
    after_seq = decode_message_cursor(after, room_id=room_id) if after is not None else None
    last_seq = await service.room_position(db=db, user_id=user_id, room_id=room_id)
    if after_seq is not None and after_seq > last_seq:
        # Taken at face value it would silence every live message up to it.
        raise BadUserInput("That cursor is past the room's last message.")
    delivered = last_seq if after_seq is None else after_seq
    async with pubsub.subscribe(room_channel(room_id)) as subscription:
        # Subscribed before reading, so nothing committed from here on can slip between the two.
        async for message in _stored_after(db, room_id, delivered, directory=directory):
            yield message
            delivered = message.seq
        async for item in subscription:
            if item is RESYNC:
                async for message in _stored_after(db, room_id, delivered, directory=directory):
                    yield message
                    delivered = message.seq
                continue
            assert isinstance(item, str)
            message = MessageView.from_json(item)
            if message.seq <= delivered:
                continue
            if message.seq > delivered + 1:
                # A gap: something was published that we did not see. Fill it from the database.
                async for missing in _stored_after(
                    db, room_id, delivered, up_to_seq=message.seq - 1, directory=directory
                ):
                    yield missing
                    delivered = missing.seq
            yield message
            delivered = message.seq


async def follow_inbox(
    *, db: Database, pubsub: PubSub, user_id: uuid.UUID, directory: UserDirectory | None = None
) -> AsyncIterator[MessageView]:
    """Every new message in any room of the user, including rooms created after subscribing.

    The stream starts where the user's rooms stood when the request arrived (as follow_room).
    """
    delivered = await service.room_last_seqs(db=db, user_id=user_id)

    async def catch_up() -> AsyncIterator[MessageView]:
        # What was committed since `delivered` was taken: at the start, and after a RESYNC.
        current = await service.room_last_seqs(db=db, user_id=user_id)
        for room_id, last_seq in current.items():
            seen = delivered.get(room_id, 0)
            if last_seq > seen:
                async for message in _stored_after(
                    db, room_id, seen, up_to_seq=last_seq, directory=directory
                ):
                    yield message
                    delivered[room_id] = message.seq

    async with pubsub.subscribe(user_channel(user_id)) as subscription:
        async for message in catch_up():
            yield message
        async for item in subscription:
            if item is RESYNC:
                async for message in catch_up():
                    yield message
                continue
            assert isinstance(item, str)
            message = MessageView.from_json(item)
            seen = delivered.get(message.room_id, 0)
            if message.seq <= seen:
                continue
            if message.seq > seen + 1:
                async for missing in _stored_after(
                    db, message.room_id, seen, up_to_seq=message.seq - 1, directory=directory
                ):
                    yield missing
                    delivered[message.room_id] = missing.seq
            yield message
            delivered[message.room_id] = message.seq
