"""Changes to messages after they are sent: edits, deletes (tombstones) and reactions.

Each change that changes something appends one log entry in the same transaction as the change
(api.chat.changes); one that changes nothing (a second delete, a reaction added twice) appends
none. They count against the sender's message rate limit.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable

from api.chat import changes
from api.chat import service as chat
from api.chat.constants import ADMIN, EMOJI_MAX_LENGTH, MAX_REACTIONS_PER_USER, OWNER
from api.chat.store import MessageRow
from api.chat.views import DELETED, EDITED, REACTION_ADDED, REACTION_REMOVED, MessageView
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Forbidden, NotFound
from api.core.pubsub import PubSub
from api.core.ratelimit import RateLimiter
from api.core.tasks import Unfinished
from api.users.cache import UserDirectory
from api.users.views import UserView

# Largest message id a client may name (ids are 64-bit).
_MAX_ID = 2**63 - 1


def parse_message_id(message_id: str) -> int:
    """A message id from a client; BAD_USER_INPUT when it is not one."""
    text = message_id.strip() if isinstance(message_id, str) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _MAX_ID:
        raise BadUserInput("Malformed message id.")
    return int(text)


def validate_emoji(emoji: str) -> str:
    """BAD_USER_INPUT unless 1 to 32 characters with no whitespace or control characters."""
    if not 0 < len(emoji) <= EMOJI_MAX_LENGTH:
        raise BadUserInput(f"A reaction must be 1 to {EMOJI_MAX_LENGTH} characters.")
    for ch in emoji:
        category = unicodedata.category(ch)
        if ch.isspace() or category in ("Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"):
            raise BadUserInput("A reaction must not contain whitespace or control characters.")
        # Format characters may hide or reorder text (bidi overrides); emoji sequences need
        # only the zero-width joiner and the tag characters of subdivision flags.
        if category == "Cf" and ch != "\u200d" and not "\U000e0020" <= ch <= "\U000e007f":
            raise BadUserInput("A reaction must not contain control characters.")
    return emoji


Change = Callable[[changes.RoomTransaction, MessageRow], Awaitable[None]]


async def _change(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    limiter: RateLimiter | None,
    actor: UserView,
    message_id: str,
    change: Change,
    directory: UserDirectory | None,
) -> MessageView:
    """Run one change to a message in its room's transaction, then publish its entries; the
    message as it is afterwards."""
    number = parse_message_id(message_id)
    room_id = await changes.message_room(db, message_id=number)
    if room_id is None:
        raise NotFound("No such message.")
    if limiter is not None and limiter.limits.messages.enabled:
        await limiter.acquire(limiter.limits.messages, str(actor.id))

    async def run() -> MessageView:
        async with changes.room_transaction(db, room_id=room_id) as transaction:
            if transaction is None:
                raise NotFound("No such message.")
            if actor.id not in transaction.members:
                raise Forbidden()
            message = await transaction.message(number)
            if message is None:
                raise NotFound("No such message.")
            await change(transaction, message)
            after = await transaction.message(number)
            assert after is not None
            for event in transaction.events:
                if event.kind == EDITED:
                    transaction.attach_message(event.seq, after)
            rows, member_ids = transaction.events, list(transaction.members)
        if rows:
            events = await chat.event_views(db, directory, rows)
            await chat.publish_events(pubsub=pubsub, events=events, member_ids=member_ids)
        (view,) = await chat.message_views(db, directory, [after])
        return view

    return await unfinished.run(run())


async def edit_message(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    editor: UserView,
    message_id: str,
    data: str,
    max_length: int = 4000,
    limiter: RateLimiter | None = None,
    directory: UserDirectory | None = None,
) -> MessageView:
    """The sender only: replace the data of a message that is not deleted (the same data
    again changes nothing)."""

    async def edit(transaction: changes.RoomTransaction, message: MessageRow) -> None:
        if message.sender_id != editor.id:
            raise Forbidden("Only the sender may edit a message.")
        if message.deleted_at is not None:
            raise BadUserInput("A deleted message cannot be edited.")
        chat.validate_message(
            data=data, type=message.type, client_message_id=None, max_length=max_length
        )
        if message.data == data:
            return
        at = utcnow()
        await transaction.edit(message.id, data=data, at=at)
        await transaction.append(EDITED, actor_id=editor.id, at=at, message_id=message.id)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=editor,
        message_id=message_id,
        change=edit,
        directory=directory,
    )


async def delete_message(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    actor: UserView,
    message_id: str,
    limiter: RateLimiter | None = None,
    directory: UserDirectory | None = None,
) -> MessageView:
    """The sender, or a group's OWNER or ADMIN: leave a tombstone (data "", deletedAt set,
    reactions cleared). Deleting twice is not an error and appends nothing."""

    async def delete(transaction: changes.RoomTransaction, message: MessageRow) -> None:
        if message.sender_id != actor.id and not (
            transaction.is_group and transaction.members[actor.id].role in (OWNER, ADMIN)
        ):
            raise Forbidden("Only the sender, an OWNER or an ADMIN may delete a message.")
        if message.deleted_at is not None:
            return
        at = utcnow()
        await transaction.delete(message.id, at=at)
        await transaction.append(DELETED, actor_id=actor.id, at=at, message_id=message.id)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        change=delete,
        directory=directory,
    )


async def add_reaction(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    actor: UserView,
    message_id: str,
    emoji: str,
    limiter: RateLimiter | None = None,
    directory: UserDirectory | None = None,
) -> MessageView:
    """Add the caller's reaction; adding it twice changes nothing."""
    emoji = validate_emoji(emoji)

    async def react(transaction: changes.RoomTransaction, message: MessageRow) -> None:
        if message.deleted_at is not None:
            raise BadUserInput("A deleted message takes no reactions.")
        mine = await transaction.reactions_by(message.id, actor.id)
        if emoji in mine:
            return
        if len(mine) >= MAX_REACTIONS_PER_USER:
            raise BadUserInput(
                f"At most {MAX_REACTIONS_PER_USER} different reactions per message each."
            )
        seq = await transaction.append(
            REACTION_ADDED, actor_id=actor.id, at=utcnow(), message_id=message.id, detail=emoji
        )
        await transaction.add_reaction(message.id, user_id=actor.id, emoji=emoji, seq=seq)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        change=react,
        directory=directory,
    )


async def remove_reaction(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    actor: UserView,
    message_id: str,
    emoji: str,
    limiter: RateLimiter | None = None,
    directory: UserDirectory | None = None,
) -> MessageView:
    """Remove the caller's reaction; removing one that is not there changes nothing."""
    emoji = validate_emoji(emoji)

    async def unreact(transaction: changes.RoomTransaction, message: MessageRow) -> None:
        if emoji not in await transaction.reactions_by(message.id, actor.id):
            return
        await transaction.remove_reaction(message.id, user_id=actor.id, emoji=emoji)
        await transaction.append(
            REACTION_REMOVED, actor_id=actor.id, at=utcnow(), message_id=message.id, detail=emoji
        )

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        change=unreact,
        directory=directory,
    )
