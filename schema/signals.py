"""Read positions, typing and presence: markRead, setTyping and the roomSignals subscription,
thin controllers over api.chat.reads and api.chat.signals."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from api.chat import reads as read_state
from api.chat import service as chat
from api.chat import signals
from api.chat.signals import PRESENCE, TYPING, SignalView
from api.chat.views import encode_message_cursor
from schema.chat import RoomType, _user
from schema.context import Info
from schema.users import UserType


@strawberry.type(
    name="Typing",
    description=(
        "Someone started or stopped typing. A typing state lapses 6 s after the last "
        "setTyping(true)."
    ),
)
class TypingType:
    room_id: strawberry.ID
    user: UserType
    typing: bool


@strawberry.type(
    name="Presence",
    description=(
        "A member came online (a first live WebSocket connection on any server) or went "
        "offline (the last one closed)."
    ),
)
class PresenceType:
    room_id: strawberry.ID
    user: UserType
    online: bool


@strawberry.type(name="ReadPosition", description="A member's read position moved forward.")
class ReadPositionType:
    room_id: strawberry.ID
    user: UserType
    seq: int
    cursor: str


RoomSignal = Annotated[
    TypingType | PresenceType | ReadPositionType,
    strawberry.union(
        "RoomSignal", description="Ephemeral state of a room: not in the log, not replayed."
    ),
]


def signal_type(view: SignalView) -> TypingType | PresenceType | ReadPositionType:
    room_id, user = strawberry.ID(str(view.room_id)), _user(view.user)
    if view.kind == TYPING:
        return TypingType(room_id=room_id, user=user, typing=view.on)
    if view.kind == PRESENCE:
        return PresenceType(room_id=room_id, user=user, online=view.on)
    return ReadPositionType(
        room_id=room_id,
        user=user,
        seq=view.seq,
        cursor=encode_message_cursor(view.room_id, view.seq),
    )


@strawberry.type
class SignalMutation:
    @strawberry.mutation(
        description=(
            "Moves the caller's read position forward to `cursor` (a position in this room); "
            "never back."
        )
    )
    async def mark_read(self, info: Info, room_id: strawberry.ID, cursor: str) -> RoomType:
        auth = await info.context.require_auth()
        state = info.context.state
        view = await read_state.mark_read(
            db=state.db,
            reads=state.reads,
            signals=state.signals,
            user=auth.user,
            room_id=chat.parse_room_id(room_id),
            cursor=cursor,
            directory=state.directory,
        )
        return RoomType.from_view(view)

    @strawberry.mutation(
        description=(
            "Tells the room the caller is typing (lapses after 6 s unless repeated) or "
            "stopped (false)."
        )
    )
    async def set_typing(self, info: Info, room_id: strawberry.ID, typing: bool = True) -> bool:
        auth = await info.context.require_auth()
        state = info.context.state
        return await signals.set_typing(
            db=state.db,
            signals=state.signals,
            user=auth.user,
            room_id=chat.parse_room_id(room_id),
            typing=typing,
        )


@strawberry.type
class SignalSubscription:
    @strawberry.subscription(
        description=(
            "Ephemeral signals of one room. On subscribing, the current state first: a\n"
            "Presence(online: true) for each member online now and a Typing(typing: true)\n"
            "for each member typing now; then every change. Signals about the subscriber\n"
            "themselves are included (read positions keep a user's devices in step)."
        )
    )
    async def room_signals(
        self, info: Info, room_id: strawberry.ID
    ) -> AsyncGenerator[RoomSignal, None]:
        auth = await info.context.require_auth()
        state = info.context.state
        listener = await signals.follow_room_signals(
            db=state.db, signals=state.signals, user=auth.user, room_id=chat.parse_room_id(room_id)
        )
        try:
            while (signal := await listener.get()) is not None:
                yield signal_type(signal)
        finally:
            await state.signals.unlisten(listener)
