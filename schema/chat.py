"""GraphQL types and resolvers of chat (placeholder until the chat module lands)."""

from __future__ import annotations

import strawberry


@strawberry.type
class ChatQuery:
    pass


@strawberry.type
class ChatMutation:
    pass


@strawberry.type
class ChatSubscription:
    @strawberry.subscription
    async def placeholder(self) -> int:  # pragma: no cover
        yield 0
