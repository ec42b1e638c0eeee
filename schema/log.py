"""GraphQL types of the room log (RoomEvent and its kinds), `roomEvents` history, and the
`roomEvents` / `inboxEvents` subscriptions: thin controllers over api.chat."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types.unset import UNSET

from api.chat import service as chat
from api.chat.views import (
    DELETED,
    EDITED,
    JOINED,
    LEFT,
    POSTED,
    REACTION_ADDED,
    REACTION_REMOVED,
    RENAMED,
    ROLE_CHANGED,
    EventPage,
    EventView,
)
from schema.chat import MessageType, PageInfo, Role, _hub_operation, _user, given
from schema.context import Info
from schema.users import UserType


@strawberry.interface(
    name="RoomEvent",
    description=(
        "One entry of a room's log (see the header): the unit that roomEvents pages and streams."
    ),
)
class RoomEventType:
    seq: int
    cursor: str = strawberry.field(
        description="Opaque position of this entry; usable as `after`/`before` everywhere."
    )
    room_id: strawberry.ID
    actor: UserType = strawberry.field(description="Who caused it.")
    created_at: datetime


@strawberry.type(
    name="MessagePosted",
    description=(
        "A message was sent. `message` is the message as it is now (it may since have been "
        "edited or deleted)."
    ),
)
class MessagePostedType(RoomEventType):
    message: MessageType


@strawberry.type(
    name="MessageEdited",
    description="The sender replaced a message's data. `message` is the message as it is now.",
)
class MessageEditedType(RoomEventType):
    message: MessageType


@strawberry.type(name="MessageDeleted")
class MessageDeletedType(RoomEventType):
    message_id: strawberry.ID


@strawberry.type(name="ReactionAdded")
class ReactionAddedType(RoomEventType):
    message_id: strawberry.ID
    emoji: str


@strawberry.type(name="ReactionRemoved")
class ReactionRemovedType(RoomEventType):
    message_id: strawberry.ID
    emoji: str


@strawberry.type(
    name="MemberJoined",
    description=(
        "`member` joined: added by `actor`, or the creator at createRoom (then actor = member)."
    ),
)
class MemberJoinedType(RoomEventType):
    member: UserType
    role: Role


@strawberry.type(
    name="MemberLeft", description="`member` left (actor = member) or was removed by `actor`."
)
class MemberLeftType(RoomEventType):
    member: UserType


@strawberry.type(name="RoleChanged")
class RoleChangedType(RoomEventType):
    member: UserType
    role: Role


@strawberry.type(name="RoomRenamed")
class RoomRenamedType(RoomEventType):
    name: str


def _common(view: EventView) -> dict[str, Any]:
    return {
        "seq": view.seq,
        "cursor": view.cursor,
        "room_id": strawberry.ID(str(view.room_id)),
        "actor": _user(view.actor),
        "created_at": view.created_at,
    }


def _message(view: EventView) -> MessageType:
    assert view.message is not None
    return MessageType.from_view(view.message)


def _member(view: EventView) -> UserType:
    assert view.member is not None
    return _user(view.member)


_BUILDERS: dict[str, Callable[[EventView], RoomEventType]] = {
    POSTED: lambda v: MessagePostedType(**_common(v), message=_message(v)),
    EDITED: lambda v: MessageEditedType(**_common(v), message=_message(v)),
    DELETED: lambda v: MessageDeletedType(
        **_common(v), message_id=strawberry.ID(str(v.message_id))
    ),
    REACTION_ADDED: lambda v: ReactionAddedType(
        **_common(v), message_id=strawberry.ID(str(v.message_id)), emoji=v.detail or ""
    ),
    REACTION_REMOVED: lambda v: ReactionRemovedType(
        **_common(v), message_id=strawberry.ID(str(v.message_id)), emoji=v.detail or ""
    ),
    JOINED: lambda v: MemberJoinedType(**_common(v), member=_member(v), role=Role(v.detail)),
    LEFT: lambda v: MemberLeftType(**_common(v), member=_member(v)),
    ROLE_CHANGED: lambda v: RoleChangedType(**_common(v), member=_member(v), role=Role(v.detail)),
    RENAMED: lambda v: RoomRenamedType(**_common(v), name=v.detail or ""),
}


def event_type(view: EventView) -> RoomEventType:
    """The GraphQL object of a log entry."""
    return _BUILDERS[view.kind](view)


# Every kind, so the schema lists them even where no field returns one by name.
EVENT_TYPES = [
    MessagePostedType,
    MessageEditedType,
    MessageDeletedType,
    ReactionAddedType,
    ReactionRemovedType,
    MemberJoinedType,
    MemberLeftType,
    RoleChangedType,
    RoomRenamedType,
]


@strawberry.type(name="RoomEventEdge")
class RoomEventEdge:
    cursor: str
    node: RoomEventType


@strawberry.type(
    name="RoomEventConnection",
    description="Log entries in seq order (oldest first) within the page.",
)
class RoomEventConnection:
    edges: list[RoomEventEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: EventPage) -> RoomEventConnection:
        edges = [RoomEventEdge(cursor=e.cursor, node=event_type(e)) for e in page.events]
        return cls(edges=edges, page_info=PageInfo.of(page, [edge.cursor for edge in edges]))


@strawberry.type
class LogQuery:
    @strawberry.field(description="A room's whole log, with the same paging rules as messages.")
    async def room_events(
        self,
        info: Info,
        room_id: strawberry.ID,
        first: int | None = UNSET,
        after: str | None = UNSET,
        last: int | None = UNSET,
        before: str | None = UNSET,
    ) -> RoomEventConnection:
        auth = await info.context.require_auth()
        state = info.context.state
        page = await chat.list_events(
            db=state.db,
            directory=state.directory,
            user=auth.user,
            room_id=chat.parse_room_id(room_id),
            first=given(first),
            after=given(after),
            last=given(last),
            before=given(before),
        )
        return RoomEventConnection.from_page(page)


@strawberry.type
class LogSubscription:
    @strawberry.subscription(
        description=(
            "Every log entry of one room: with `after` (a cursor), first every entry after\n"
            "it, then live ones: none missing, none twice, in seq order."
        )
    )
    async def room_events(
        self, info: Info, room_id: strawberry.ID, after: str | None = UNSET
    ) -> AsyncGenerator[RoomEventType, None]:
        auth = await info.context.require_auth()
        await info.context.state.hub.follow_room(
            operation=_hub_operation(),
            user_id=auth.user.id,
            room_id=chat.parse_room_id(room_id),
            after=given(after),
            events=True,
        )
        return
        yield  # an async generator for strawberry; the hub writes each result itself

    @strawberry.subscription(
        description=(
            "Every log entry of every room of the signed-in user, including the MemberJoined\n"
            "that adds them to a room (from then on that room's entries follow) and the\n"
            "MemberLeft that removes them (after which that room's entries stop)."
        )
    )
    async def inbox_events(self, info: Info) -> AsyncGenerator[RoomEventType, None]:
        auth = await info.context.require_auth()
        await info.context.state.hub.follow_inbox(
            operation=_hub_operation(), user_id=auth.user.id, events=True
        )
        return
        yield  # an async generator for strawberry; the hub writes each result itself
