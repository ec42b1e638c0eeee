"""Changes to messages after they are sent: edits, deletes (tombstones) and reactions.

Each change that changes something appends one log entry in the same transaction as the change
(api.chat.changes); one that changes nothing (a second delete, a reaction added twice) appends
none. They count against the sender's message rate limit.
"""

from __future__ import annotations

import unicodedata

from api.chat import changes
from api.chat import service as chat
from api.chat.constants import ADMIN, EMOJI_MAX_LENGTH, GROUP, MAX_REACTIONS_PER_USER, OWNER
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


async def _change(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    limiter: RateLimiter | None,
    actor: UserView,
    message_id: str,
    decide: changes.Decide,
    directory: UserDirectory | None,
) -> MessageView:
    """Apply one change to a message under its room's lock (`decide` holds the rules), then
    publish its entry; the message as it is afterwards."""
    number = parse_message_id(message_id)
    if limiter is not None and limiter.limits.messages.enabled:
        await limiter.acquire(limiter.limits.messages, str(actor.id))

    def checked(state: changes.MessageState) -> changes.MessageWrite | None:
        if state.actor_role is None:
            raise Forbidden()
        return decide(state)

    async def run() -> MessageView:
        outcome = await changes.change_message(
            db, message_id=number, actor_id=actor.id, at=utcnow(), decide=checked
        )
        if outcome is None:
            raise NotFound("No such message.")
        state, entry = outcome
        if entry is not None:
            (event,) = await chat.event_views(db, directory, [entry])
            await chat.publish_events(pubsub=pubsub, events=[event], member_ids=state.member_ids)
        (view,) = await chat.message_views(db, directory, [state.message])
        return view

    # Runs to the end even if the request is cancelled: committed means published.
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

    def edit(state: changes.MessageState) -> changes.MessageWrite | None:
        message = state.message
        if message.sender_id != editor.id:
            raise Forbidden("Only the sender may edit a message.")
        if message.deleted_at is not None:
            raise BadUserInput("A deleted message cannot be edited.")
        chat.validate_message(
            data=data, type=message.type, client_message_id=None, max_length=max_length
        )
        return None if message.data == data else changes.MessageWrite(EDITED, data)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=editor,
        message_id=message_id,
        decide=edit,
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

    def delete(state: changes.MessageState) -> changes.MessageWrite | None:
        moderator = state.room_kind == GROUP and state.actor_role in (OWNER, ADMIN)
        if state.message.sender_id != actor.id and not moderator:
            raise Forbidden("Only the sender, an OWNER or an ADMIN may delete a message.")
        return None if state.message.deleted_at is not None else changes.MessageWrite(DELETED)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        decide=delete,
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

    def react(state: changes.MessageState) -> changes.MessageWrite | None:
        if state.message.deleted_at is not None:
            raise BadUserInput("A deleted message takes no reactions.")
        if emoji in state.mine:
            return None
        if len(state.mine) >= MAX_REACTIONS_PER_USER:
            raise BadUserInput(
                f"At most {MAX_REACTIONS_PER_USER} different reactions per message each."
            )
        return changes.MessageWrite(REACTION_ADDED, emoji)

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        decide=react,
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

    def unreact(state: changes.MessageState) -> changes.MessageWrite | None:
        return changes.MessageWrite(REACTION_REMOVED, emoji) if emoji in state.mine else None

    return await _change(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        limiter=limiter,
        actor=actor,
        message_id=message_id,
        decide=unreact,
        directory=directory,
    )
