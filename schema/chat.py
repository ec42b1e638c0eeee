"""GraphQL types and resolvers of chat: thin controllers over api.chat."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, TypeVar

import strawberry
from strawberry.types.unset import UNSET, UnsetType

from api.chat import service as chat
from api.chat.constants import DEFAULT_ROOMS_PAGE_SIZE
from api.chat.views import (
    EventPage,
    MessagePage,
    MessageView,
    ReactionView,
    RoomPage,
    RoomView,
    UserView,
    encode_message_cursor,
    encode_room_cursor,
)
from schema.context import Info
from schema.shapes import VIEWER_DEPENDENT
from schema.sinks import Operation, current_operation
from schema.users import UserType

T = TypeVar("T")


def given(value: T | UnsetType | None) -> T | None:
    """An optional argument's value; None when the client left it out.

    Optional arguments default to UNSET rather than None so the exported schema shows them
    without a default, exactly as the contract writes them.
    """
    return None if isinstance(value, UnsetType) else value


def _user(view: UserView) -> UserType:
    return UserType(id=strawberry.ID(str(view.id)), name=view.name, created_at=view.created_at)


@strawberry.enum(name="RoomKind")
class RoomKind(Enum):
    DIRECT = "direct"
    GROUP = "group"


@strawberry.enum(name="Role")
class Role(Enum):
    OWNER = "OWNER"
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"


@strawberry.type(name="Reaction")
class ReactionType:
    emoji: str = strawberry.field(description="The emoji (or short text) itself, as it was given.")
    count: int = strawberry.field(description="How many members reacted with it.")
    user_ids: strawberry.Private[tuple[uuid.UUID, ...]]

    @strawberry.field(
        description=(
            "Whether the signed-in user (the subscriber, on a subscription) is among them."
        ),
        # Results that read it are never shared between subscribers (schema.hub).
        metadata={VIEWER_DEPENDENT: True},
    )
    def me(self, info: Info) -> bool:
        return info.context.viewer_id in self.user_ids

    @classmethod
    def from_view(cls, view: ReactionView) -> ReactionType:
        return cls(emoji=view.emoji, count=view.count, user_ids=view.user_ids)


@strawberry.type(name="Message")
class MessageType:
    id: strawberry.ID
    room_id: strawberry.ID
    seq: int = strawberry.field(
        description=(
            "Position of the message in its room's log, in commit order. Where nothing but\n"
            "messages were posted, 1, 2, 3, ... without gaps; other log entries (edits,\n"
            "reactions, membership) take seqs between messages."
        )
    )
    sender: UserType
    type: str = strawberry.field(
        description='What kind of content data holds; "text" unless the sender says otherwise.'
    )
    data: str
    created_at: datetime
    client_message_id: str | None = strawberry.field(
        description="The sender's own id for this message, making a retried send idempotent."
    )
    cursor: str = strawberry.field(
        description="Opaque position of this message; the same value as its edge cursor."
    )
    edited_at: datetime | None = strawberry.field(
        description="When the sender last edited it; null if never."
    )
    deleted_at: datetime | None = strawberry.field(
        description=(
            'When it was deleted; then data is "" and reactions are empty. Deleted messages '
            "stay in history as tombstones."
        )
    )
    reactions: list[ReactionType] = strawberry.field(
        description="Reactions, in the order each emoji was first used on this message."
    )

    @classmethod
    def from_view(cls, view: MessageView) -> MessageType:
        return cls(
            id=strawberry.ID(str(view.id)),
            room_id=strawberry.ID(str(view.room_id)),
            seq=view.seq,
            sender=_user(view.sender),
            type=view.type,
            data=view.data,
            created_at=view.created_at,
            client_message_id=view.client_message_id,
            cursor=view.cursor,
            edited_at=view.edited_at,
            deleted_at=view.deleted_at,
            reactions=[ReactionType.from_view(r) for r in view.reactions],
        )


class SharedMessageTypes:
    """MessageType.from_view, keeping the last conversion: a send's response and its live
    delivery (the hub, on the next turn of the loop) convert the same message view one after
    the other, and both only read the object. Built with the app (the hub's `to_message`)."""

    __slots__ = ("_type", "_view")

    def __init__(self) -> None:
        self._view: MessageView | None = None
        self._type: MessageType | None = None

    def __call__(self, view: MessageView) -> MessageType:
        if view is self._view and self._type is not None:
            return self._type
        converted = MessageType.from_view(view)
        self._view, self._type = view, converted
        return converted


@strawberry.type(name="Membership")
class MembershipType:
    user: UserType
    role: Role
    joined_at: datetime
    read_seq: int = strawberry.field(
        description="seq up to which this member has read; 0 before the first markRead."
    )


@strawberry.type(
    name="Room",
    description=(
        "A conversation. A direct room is the pair of two users; its id is stable and\n"
        "known before any message is sent. A group room has a name and 2 or more members."
    ),
)
class RoomType:
    id: strawberry.ID
    kind: RoomKind
    name: str = strawberry.field(
        description=(
            'Direct room: the two member names, sorted, joined by ", ". Group room: its name.'
        )
    )
    members: list[UserType]
    last_message: MessageType | None = strawberry.field(
        description="The newest message that is not deleted, or null."
    )
    last_seq: int = strawberry.field(
        description="seq of the room's newest log entry; 0 when the log is empty."
    )
    created_at: datetime
    view: strawberry.Private[RoomView]

    @strawberry.field(description="Every member with role and read position (read receipts).")
    def memberships(self, info: Info) -> list[MembershipType]:
        reads = info.context.state.reads
        return [
            MembershipType(
                user=_user(member.user),
                role=Role(member.role),
                joined_at=member.joined_at,
                read_seq=reads.effective(self.view.id, member.user.id, member.read_seq),
            )
            for member in self.view.members
        ]

    @strawberry.field(
        description=(
            "Messages by other members after the signed-in user's read position, deleted\n"
            "ones not counted. Exact up to 1000; larger counts read as 1000."
        ),
        metadata={VIEWER_DEPENDENT: True},
    )
    async def unread_count(self, info: Info) -> int:
        return await info.context.unread_count(self.view.id, self._my_read_seq(info))

    @strawberry.field(
        description=(
            "The signed-in user's read position as a cursor; null before the first markRead."
        ),
        metadata={VIEWER_DEPENDENT: True},
    )
    def read_cursor(self, info: Info) -> str | None:
        seq = self._my_read_seq(info)
        return encode_message_cursor(self.view.id, seq) if seq else None

    def _my_read_seq(self, info: Info) -> int:
        viewer = info.context.viewer_id
        stored = next((m.read_seq for m in self.view.members if m.user.id == viewer), 0)
        if viewer is None:
            return stored
        return int(info.context.state.reads.effective(self.view.id, viewer, stored))

    @classmethod
    def from_view(cls, view: RoomView) -> RoomType:
        return cls(
            id=strawberry.ID(str(view.id)),
            kind=RoomKind(view.kind),
            name=view.name,
            members=[_user(member.user) for member in view.members],
            last_message=MessageType.from_view(view.last_message) if view.last_message else None,
            last_seq=view.last_seq,
            created_at=view.created_at,
            view=view,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None

    @classmethod
    def of(cls, page: MessagePage | RoomPage | EventPage, cursors: list[str]) -> PageInfo:
        return cls(
            has_next_page=page.has_next_page,
            has_previous_page=page.has_previous_page,
            start_cursor=cursors[0] if cursors else None,
            end_cursor=cursors[-1] if cursors else None,
        )


@strawberry.type
class MessageEdge:
    cursor: str
    node: MessageType


@strawberry.type(description="Messages in chronological order (oldest first) within the page.")
class MessageConnection:
    edges: list[MessageEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: MessagePage) -> MessageConnection:
        nodes = [MessageType.from_view(message) for message in page.messages]
        edges = [MessageEdge(cursor=node.cursor, node=node) for node in nodes]
        return cls(edges=edges, page_info=PageInfo.of(page, [edge.cursor for edge in edges]))


@strawberry.type
class RoomEdge:
    cursor: str
    node: RoomType


@strawberry.type
class RoomConnection:
    edges: list[RoomEdge]
    page_info: PageInfo

    @classmethod
    def from_page(cls, page: RoomPage) -> RoomConnection:
        edges = [
            RoomEdge(cursor=encode_room_cursor(r), node=RoomType.from_view(r)) for r in page.rooms
        ]
        return cls(edges=edges, page_info=PageInfo.of(page, [edge.cursor for edge in edges]))


@strawberry.type
class ChatQuery:
    @strawberry.field(description="The direct room between the signed-in user and `with`.")
    async def direct_room(
        self, info: Info, with_: Annotated[str, strawberry.argument(name="with")]
    ) -> RoomType:
        auth = await info.context.require_auth()
        state = info.context.state
        room = await chat.open_direct_room(
            db=state.db, me=auth.user, with_name=with_, directory=state.directory
        )
        return RoomType.from_view(room)

    @strawberry.field
    async def room(self, info: Info, id: strawberry.ID) -> RoomType | None:
        auth = await info.context.require_auth()
        state = info.context.state
        room = await chat.get_room(
            db=state.db,
            user=auth.user,
            room_id=chat.parse_room_id(id),
            directory=state.directory,
        )
        return RoomType.from_view(room) if room else None

    @strawberry.field(
        description=(
            "Rooms of the signed-in user, most recent activity first: direct rooms that\n"
            "have messages, and every group room they belong to (creation counts as activity)."
        )
    )
    async def rooms(
        self, info: Info, first: int | None = DEFAULT_ROOMS_PAGE_SIZE, after: str | None = UNSET
    ) -> RoomConnection:
        auth = await info.context.require_auth()
        state = info.context.state
        page = await chat.list_rooms(
            db=state.db,
            user=auth.user,
            first=first,
            after=given(after),
            directory=state.directory,
        )
        return RoomConnection.from_page(page)

    @strawberry.field(
        description=(
            "History of a room, keyset-paginated (Relay). With neither first nor last, the\n"
            "newest 50. `last`/`before` page back in time, `first`/`after` page forward.\n"
            "At most 100 per page."
        )
    )
    async def messages(
        self,
        info: Info,
        room_id: strawberry.ID,
        first: int | None = UNSET,
        after: str | None = UNSET,
        last: int | None = UNSET,
        before: str | None = UNSET,
    ) -> MessageConnection:
        auth = await info.context.require_auth()
        state = info.context.state
        page = await chat.list_messages(
            db=state.db,
            directory=state.directory,
            user=auth.user,
            room_id=chat.parse_room_id(room_id),
            first=given(first),
            after=given(after),
            last=given(last),
            before=given(before),
        )
        return MessageConnection.from_page(page)


async def _send_options(info: Info) -> dict[str, Any]:
    """What sending needs besides the message: the signed-in sender and the app's parts."""
    auth = await info.context.require_auth()
    state = info.context.state
    return {
        "db": state.db,
        "pubsub": state.pubsub,
        "unfinished": info.context.unfinished,
        "sender": auth.user,
        "max_length": state.settings.message_max_length,
        "limiter": state.limiter,
        "signals": state.signals,
    }


@strawberry.type
class ChatMutation:
    @strawberry.mutation
    async def send_message(
        self,
        info: Info,
        room_id: strawberry.ID,
        data: str,
        type: str = "text",
        client_message_id: str | None = UNSET,
    ) -> MessageType:
        options = await _send_options(info)  # authentication comes first
        message = await chat.send_message(
            room_id=chat.parse_room_id(room_id),
            data=data,
            type=type,
            client_message_id=given(client_message_id),
            **options,
        )
        # The same object its delivery will take (SharedMessageTypes).
        converted: MessageType = info.context.state.hub.to_message(message)
        return converted

    @strawberry.mutation(description="Sends to the direct room with `to`.")
    async def send_direct_message(
        self,
        info: Info,
        to: str,
        data: str,
        type: str = "text",
        client_message_id: str | None = UNSET,
    ) -> MessageType:
        options = await _send_options(info)  # authentication comes first
        message = await chat.send_direct_message(
            to=to,
            directory=info.context.state.directory,
            data=data,
            type=type,
            client_message_id=given(client_message_id),
            **options,
        )
        converted: MessageType = info.context.state.hub.to_message(message)
        return converted


@strawberry.type
class ChatSubscription:
    @strawberry.subscription(
        description=(
            "Messages of one room as they are committed. With `after` (a cursor), first\n"
            "every message after it, then live ones: none missing, none twice, in seq order."
        )
    )
    async def message_added(
        self, info: Info, room_id: strawberry.ID, after: str | None = UNSET
    ) -> AsyncGenerator[MessageType, None]:
        auth = await info.context.require_auth()
        await info.context.state.hub.follow_room(
            operation=_hub_operation(),
            user_id=auth.user.id,
            room_id=chat.parse_room_id(room_id),
            after=given(after),
        )
        return
        yield  # an async generator for strawberry; the hub writes each result itself

    @strawberry.subscription(
        description=(
            "Every new message in any room of the signed-in user, new direct rooms included."
        )
    )
    async def inbox(self, info: Info) -> AsyncGenerator[MessageType, None]:
        auth = await info.context.require_auth()
        await info.context.state.hub.follow_inbox(operation=_hub_operation(), user_id=auth.user.id)
        return
        yield  # an async generator for strawberry; the hub writes each result itself


def _hub_operation() -> Operation:
    operation = current_operation.get()
    if operation is None:
        # Only the WebSocket handlers (schema.ws) run subscriptions; HTTP refuses them.
        raise RuntimeError("a subscription ran outside a WebSocket operation")
    return operation
