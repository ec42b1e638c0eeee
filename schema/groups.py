"""Mutations of group rooms and of messages after sending: thin controllers over
api.chat.groups and api.chat.editing."""

from __future__ import annotations

from typing import Any

import strawberry

from api.chat import editing, groups
from api.chat import service as chat
from schema.chat import MessageType, Role, RoomType
from schema.context import Info


async def _common(info: Info) -> dict[str, Any]:
    """The app's parts every change needs; authentication comes first."""
    auth = await info.context.require_auth()
    state = info.context.state
    return {
        "db": state.db,
        "pubsub": state.pubsub,
        "unfinished": info.context.unfinished,
        "directory": state.directory,
        "user": auth.user,
    }


@strawberry.type
class GroupMutation:
    @strawberry.mutation(
        description=(
            "Creates a group room: the caller is its OWNER, the named users (1 to 99\n"
            "others; duplicates and the caller's own name ignored) are MEMBERs. The log\n"
            "starts with one MemberJoined per member, the caller's first."
        )
    )
    async def create_room(self, info: Info, name: str, members: list[str]) -> RoomType:
        common = await _common(info)
        room = await groups.create_room(
            owner=common.pop("user"), name=name, member_names=members, **common
        )
        return RoomType.from_view(room)

    @strawberry.mutation(
        description="OWNER or ADMIN: adds users as MEMBERs; names already in the room are ignored."
    )
    async def add_members(self, info: Info, room_id: strawberry.ID, names: list[str]) -> RoomType:
        common = await _common(info)
        room = await groups.add_members(
            caller=common.pop("user"),
            room_id=chat.parse_room_id(room_id),
            names=names,
            max_members=info.context.state.settings.max_room_members,
            **common,
        )
        return RoomType.from_view(room)

    @strawberry.mutation(
        description=(
            "OWNER or ADMIN: removes a member. An ADMIN may remove only MEMBERs; nobody "
            "removes the OWNER."
        )
    )
    async def remove_member(self, info: Info, room_id: strawberry.ID, name: str) -> RoomType:
        common = await _common(info)
        room = await groups.remove_member(
            caller=common.pop("user"), room_id=chat.parse_room_id(room_id), name=name, **common
        )
        return RoomType.from_view(room)

    @strawberry.mutation(
        description=(
            "Leaves a group room. An OWNER who leaves hands ownership to the longest-standing\n"
            "ADMIN, or else the longest-standing MEMBER. Once left, the room is FORBIDDEN to "
            "the caller."
        )
    )
    async def leave_room(self, info: Info, room_id: strawberry.ID) -> bool:
        common = await _common(info)
        return await groups.leave_room(
            caller=common.pop("user"), room_id=chat.parse_room_id(room_id), **common
        )

    @strawberry.mutation(
        description=(
            "OWNER only: sets a member's role to ADMIN or MEMBER, or hands over OWNER\n"
            "(the caller then becomes ADMIN)."
        )
    )
    async def set_role(self, info: Info, room_id: strawberry.ID, name: str, role: Role) -> RoomType:
        common = await _common(info)
        room = await groups.set_role(
            caller=common.pop("user"),
            room_id=chat.parse_room_id(room_id),
            name=name,
            role=role.value,
            **common,
        )
        return RoomType.from_view(room)

    @strawberry.mutation(description="OWNER or ADMIN: renames a group room (1 to 100 characters).")
    async def rename_room(self, info: Info, room_id: strawberry.ID, name: str) -> RoomType:
        common = await _common(info)
        room = await groups.rename_room(
            caller=common.pop("user"), room_id=chat.parse_room_id(room_id), name=name, **common
        )
        return RoomType.from_view(room)


@strawberry.type
class MessageMutation:
    @strawberry.mutation(
        description="The sender only: replaces the data of a message that is not deleted."
    )
    async def edit_message(self, info: Info, message_id: strawberry.ID, data: str) -> MessageType:
        common = await _common(info)
        state = info.context.state
        message = await editing.edit_message(
            editor=common.pop("user"),
            message_id=message_id,
            data=data,
            max_length=state.settings.message_max_length,
            limiter=state.limiter,
            **common,
        )
        return MessageType.from_view(message)

    @strawberry.mutation(
        description=(
            "The sender, or an OWNER/ADMIN of the group: leaves a tombstone. Deleting twice "
            "is not an error."
        )
    )
    async def delete_message(self, info: Info, message_id: strawberry.ID) -> MessageType:
        common = await _common(info)
        message = await editing.delete_message(
            actor=common.pop("user"),
            message_id=message_id,
            limiter=info.context.state.limiter,
            **common,
        )
        return MessageType.from_view(message)

    @strawberry.mutation(
        description=(
            "Adds the caller's reaction; adding the same one twice changes nothing (no second "
            "log entry)."
        )
    )
    async def add_reaction(self, info: Info, message_id: strawberry.ID, emoji: str) -> MessageType:
        common = await _common(info)
        message = await editing.add_reaction(
            actor=common.pop("user"),
            message_id=message_id,
            emoji=emoji,
            limiter=info.context.state.limiter,
            **common,
        )
        return MessageType.from_view(message)

    @strawberry.mutation(
        description="Removes the caller's reaction; removing one that is not there changes nothing."
    )
    async def remove_reaction(
        self, info: Info, message_id: strawberry.ID, emoji: str
    ) -> MessageType:
        common = await _common(info)
        message = await editing.remove_reaction(
            actor=common.pop("user"),
            message_id=message_id,
            emoji=emoji,
            limiter=info.context.state.limiter,
            **common,
        )
        return MessageType.from_view(message)
