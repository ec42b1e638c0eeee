"""What one running app holds: settings, keys, the database, pub/sub and the caches."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from api.chat.reads import ReadPositions
from api.chat.signals import Signals
from api.core.db import Database
from api.core.pubsub import PubSub
from api.core.ratelimit import RateLimiter
from api.core.security import Keys
from api.core.settings import Settings
from api.core.tasks import InCaller, Unfinished
from api.users.cache import SessionCache, TokenCache, UserDirectory
from api.users.passwords import PasswordHasher
from api.users.sessions import SessionRegistry


@dataclass(slots=True)
class AppState:
    """Built in the lifespan, torn down with it; resolvers reach it through the context."""

    settings: Settings
    keys: Keys
    db: Database
    pubsub: PubSub
    limiter: RateLimiter
    hasher: PasswordHasher
    tokens: TokenCache
    sessions: SessionCache
    directory: UserDirectory
    unfinished: Unfinished
    # The same for callers that are never cancelled mid-way (HTTP requests): Context.unfinished.
    in_caller: InCaller
    # Every socket of the process by session, closed when its session ends.
    session_registry: SessionRegistry
    # Read positions not yet written (api.chat.reads) and typing/presence (api.chat.signals).
    reads: ReadPositions
    signals: Signals
    # The GraphQL layer's prepared-document cache (schema.documents.Documents); typed loosely
    # because api/ never imports schema/.
    documents: Any = None
    # The delivery hub (schema.hub.Hub), likewise.
    hub: Any = None
    # Compiled result plans (schema.execution.Plans), likewise.
    plans: Any = None
    # Prometheus metrics (api.monitoring.Monitoring); None when METRICS=false.
    monitoring: Any = None
    # Set after each purge of ended sessions (for whoever waits on one).
    sessions_purged: asyncio.Event = field(default_factory=asyncio.Event)
