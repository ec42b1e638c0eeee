"""Group rooms: creation, membership and roles (OWNER > ADMIN > MEMBER), renames.

Every change appends its log entries in the same transaction (api.chat.changes), then wakes
subscribers: the room's channel, and the inbox of every member before and after the change, so
a member added hears of their MemberJoined and a member removed of their MemberLeft.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Sequence

from api.chat import changes
from api.chat import service as chat
from api.chat.constants import (
    ADMIN,
    MAX_CREATE_MEMBERS,
    MEMBER,
    OWNER,
    ROLE_RANK,
    ROOM_NAME_MAX_LENGTH,
)
from api.chat.store import EventRow
from api.chat.views import JOINED, LEFT, RENAMED, ROLE_CHANGED, RoomView
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Forbidden, NotFound
from api.core.pubsub import PubSub
from api.core.tasks import Unfinished
from api.users import service as users
from api.users.cache import UserDirectory
from api.users.views import UserView

ROLES = frozenset(ROLE_RANK)


def validate_room_name(name: str) -> str:
    """A group's name as stored; BAD_USER_INPUT unless 1 to 100 characters, not blank, with no
    control characters."""
    if not 0 < len(name) <= ROOM_NAME_MAX_LENGTH:
        raise BadUserInput(f"A room name must be 1 to {ROOM_NAME_MAX_LENGTH} characters.")
    if not name.strip():
        raise BadUserInput("A room name must not be blank.")
    # Cc (controls, NUL included), Cs (lone surrogates) and line/paragraph separators.
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name):
        raise BadUserInput("A room name must not contain control characters.")
    return name


async def _users_named(
    *, db: Database, directory: UserDirectory | None, names: Sequence[str]
) -> list[UserView]:
    """The users with these names, each once, in the order given; NOT_FOUND for an unknown
    name."""
    found: dict[uuid.UUID, UserView] = {}
    for name in dict.fromkeys(names):
        user = await users.find_user_by_name(db=db, name=name, directory=directory)
        if user is None:
            raise NotFound(f"No user named {chat.shown(name)}.")
        found.setdefault(user.id, user)
    return list(found.values())


async def _publish(
    *,
    db: Database,
    pubsub: PubSub,
    directory: UserDirectory | None,
    rows: Sequence[EventRow],
    member_ids: Sequence[uuid.UUID],
) -> None:
    if rows:
        events = await chat.event_views(db, directory, rows)
        await chat.publish_events(pubsub=pubsub, events=events, member_ids=member_ids)


RoomChange = Callable[[changes.RoomTransaction], Awaitable[None]]


async def _change_room(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    directory: UserDirectory | None,
    caller: UserView,
    room_id: uuid.UUID,
    change: RoomChange,
) -> None:
    """Run one change to a group in the room's transaction (checked: the room exists, the
    caller is a member, it is a group), then publish its entries to the members before and
    after it. Runs to the end even if the request is cancelled (committed means published)."""

    async def run() -> None:
        async with changes.room_transaction(db, room_id=room_id) as found:
            transaction = _check_group(found, caller)
            before = list(transaction.members)
            await change(transaction)
            rows = transaction.events
            member_ids = list(dict.fromkeys([*before, *transaction.members]))
        await _publish(db=db, pubsub=pubsub, directory=directory, rows=rows, member_ids=member_ids)

    await unfinished.run(run())


async def _change_and_view(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    directory: UserDirectory | None,
    caller: UserView,
    room_id: uuid.UUID,
    change: RoomChange,
) -> RoomView:
    """`_change_room`, then the room as the caller now sees it."""
    await _change_room(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=change,
    )
    return await _room_view(db=db, user=caller, room_id=room_id, directory=directory)


async def _room_view(
    *, db: Database, user: UserView, room_id: uuid.UUID, directory: UserDirectory | None
) -> RoomView:
    room = await chat.get_room(db=db, user=user, room_id=room_id, directory=directory)
    if room is None:
        raise NotFound("No such room.")
    return room


async def create_room(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    owner: UserView,
    name: str,
    member_names: Sequence[str],
    directory: UserDirectory | None = None,
) -> RoomView:
    """A group room: the caller its OWNER, the named users MEMBERs (duplicates and the caller's
    own name ignored); the log starts with one MemberJoined per member, the owner's first."""
    name = validate_room_name(name)
    if not member_names:
        raise BadUserInput("Name at least one other member.")
    if len(member_names) > 10 * MAX_CREATE_MEMBERS:
        raise BadUserInput(f"A new room takes at most {MAX_CREATE_MEMBERS} other members.")
    others = [
        user
        for user in await _users_named(db=db, directory=directory, names=member_names)
        if user.id != owner.id
    ]
    if not others:
        raise BadUserInput("A group room needs at least one member besides you.")
    if len(others) > MAX_CREATE_MEMBERS:
        raise BadUserInput(f"A new room takes at most {MAX_CREATE_MEMBERS} other members.")
    room_id = uuid.uuid4()

    async def create() -> None:
        rows = await changes.create_group(
            db,
            room_id=room_id,
            name=name,
            owner_id=owner.id,
            member_ids=[user.id for user in others],
            owner_role=OWNER,
            member_role=MEMBER,
            joined_kind=JOINED,
            at=utcnow(),
        )
        await _publish(
            db=db,
            pubsub=pubsub,
            directory=directory,
            rows=rows,
            member_ids=[owner.id, *(user.id for user in others)],
        )

    await unfinished.run(create())
    return await _room_view(db=db, user=owner, room_id=room_id, directory=directory)


def _check_group(
    transaction: changes.RoomTransaction | None, caller: UserView
) -> changes.RoomTransaction:
    """The room, when it exists (NOT_FOUND), the caller is a member (FORBIDDEN) and it is a
    group (BAD_USER_INPUT: a direct room's membership never changes)."""
    if transaction is None:
        raise NotFound("No such room.")
    if caller.id not in transaction.members:
        raise Forbidden()
    if not transaction.is_group:
        raise BadUserInput("A direct room has exactly its two members; this needs a group room.")
    return transaction


def _membership(
    transaction: changes.RoomTransaction, user: UserView, name: str
) -> changes.Membership:
    """The user's membership of the room; NOT_FOUND (by the name asked for) when they have none."""
    membership = transaction.members.get(user.id)
    if membership is None:
        raise NotFound(f"{chat.shown(name)} is not a member of this room.")
    return membership


def _require_role(transaction: changes.RoomTransaction, caller: UserView, role: str) -> str:
    mine = transaction.members[caller.id].role
    if ROLE_RANK[mine] < ROLE_RANK[role]:
        raise Forbidden(
            f"Only {'the OWNER' if role == OWNER else 'an OWNER or ADMIN'} may do that."
        )
    return mine


async def add_members(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    caller: UserView,
    room_id: uuid.UUID,
    names: Sequence[str],
    max_members: int,
    directory: UserDirectory | None = None,
) -> RoomView:
    """OWNER or ADMIN: adds users as MEMBERs; names already in the room are ignored."""
    if not names:
        raise BadUserInput("Name at least one user to add.")
    if len(names) > 10 * max_members:
        raise BadUserInput(f"A room has at most {max_members} members.")
    wanted = await _users_named(db=db, directory=directory, names=names)

    async def add(transaction: changes.RoomTransaction) -> None:
        _require_role(transaction, caller, ADMIN)
        new = [user for user in wanted if user.id not in transaction.members]
        if len(transaction.members) + len(new) > max_members:
            raise BadUserInput(f"A room has at most {max_members} members.")
        at = utcnow()
        for user in new:
            seq = await transaction.append(
                JOINED, actor_id=caller.id, at=at, member_id=user.id, detail=MEMBER
            )
            await transaction.add_member(user.id, role=MEMBER, at=at, seq=seq)

    return await _change_and_view(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=add,
    )


async def remove_member(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    caller: UserView,
    room_id: uuid.UUID,
    name: str,
    directory: UserDirectory | None = None,
) -> RoomView:
    """OWNER or ADMIN: removes a member; an ADMIN only MEMBERs; nobody removes the OWNER."""
    (target,) = await _users_named(db=db, directory=directory, names=[name])

    async def remove(transaction: changes.RoomTransaction) -> None:
        mine = _require_role(transaction, caller, ADMIN)
        membership = _membership(transaction, target, name)
        if membership.role == OWNER:
            raise Forbidden("Nobody removes the OWNER.")
        if mine == ADMIN and membership.role != MEMBER:
            raise Forbidden("An ADMIN may remove only MEMBERs.")
        await transaction.append(LEFT, actor_id=caller.id, at=utcnow(), member_id=target.id)
        await transaction.remove_member(target.id)

    return await _change_and_view(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=remove,
    )


async def leave_room(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    caller: UserView,
    room_id: uuid.UUID,
    directory: UserDirectory | None = None,
) -> bool:
    """Leave a group room. An OWNER who leaves hands ownership to the longest-standing ADMIN,
    or else the longest-standing MEMBER."""

    async def leave(transaction: changes.RoomTransaction) -> None:
        at = utcnow()
        if transaction.members[caller.id].role == OWNER:
            # Members are in the order they joined.
            others = [m for m in transaction.members.values() if m.user_id != caller.id]
            heir = next((m for m in others if m.role == ADMIN), None) or next(iter(others), None)
            if heir is not None:
                await transaction.append(
                    ROLE_CHANGED, actor_id=caller.id, at=at, member_id=heir.user_id, detail=OWNER
                )
                await transaction.set_role(heir.user_id, OWNER)
        await transaction.append(LEFT, actor_id=caller.id, at=at, member_id=caller.id)
        await transaction.remove_member(caller.id)

    await _change_room(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=leave,
    )
    return True


async def set_role(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    caller: UserView,
    room_id: uuid.UUID,
    name: str,
    role: str,
    directory: UserDirectory | None = None,
) -> RoomView:
    """OWNER only: sets a member's role to ADMIN or MEMBER, or hands over OWNER (the caller
    then becomes ADMIN). Setting the role a member already has changes nothing."""
    if role not in ROLES:
        raise BadUserInput("Unknown role.")
    (target,) = await _users_named(db=db, directory=directory, names=[name])

    async def change(transaction: changes.RoomTransaction) -> None:
        _require_role(transaction, caller, OWNER)
        membership = _membership(transaction, target, name)
        if target.id == caller.id:
            if role != OWNER:
                raise BadUserInput("Hand OWNER to another member instead.")
            return
        if membership.role == role:
            return
        at = utcnow()
        await transaction.append(
            ROLE_CHANGED, actor_id=caller.id, at=at, member_id=target.id, detail=role
        )
        await transaction.set_role(target.id, role)
        if role == OWNER:
            await transaction.append(
                ROLE_CHANGED, actor_id=caller.id, at=at, member_id=caller.id, detail=ADMIN
            )
            await transaction.set_role(caller.id, ADMIN)

    return await _change_and_view(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=change,
    )


async def rename_room(
    *,
    db: Database,
    pubsub: PubSub,
    unfinished: Unfinished,
    caller: UserView,
    room_id: uuid.UUID,
    name: str,
    directory: UserDirectory | None = None,
) -> RoomView:
    """OWNER or ADMIN: renames a group room; the same name again changes nothing."""
    name = validate_room_name(name)

    async def rename(transaction: changes.RoomTransaction) -> None:
        _require_role(transaction, caller, ADMIN)
        if transaction.name != name:
            await transaction.append(RENAMED, actor_id=caller.id, at=utcnow(), detail=name)
            await transaction.rename(name)

    return await _change_and_view(
        db=db,
        pubsub=pubsub,
        unfinished=unfinished,
        directory=directory,
        caller=caller,
        room_id=room_id,
        change=rename,
    )
