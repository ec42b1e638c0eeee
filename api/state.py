"""What one running app holds: settings, derived keys, the database and pub/sub."""

from __future__ import annotations

from dataclasses import dataclass

from api.core.db import Database
from api.core.pubsub import PubSub
from api.core.ratelimit import RateLimiter
from api.core.security import Keys
from api.core.settings import Settings


@dataclass(slots=True)
class AppState:
    """Built in the lifespan, torn down with it; resolvers reach it through the context."""

    settings: Settings
    keys: Keys
    db: Database
    pubsub: PubSub
    limiter: RateLimiter
