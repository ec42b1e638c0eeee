"""In-process caches of the accounts module, built by the app's lifespan.

Authenticating a request must not cost a database round trip: the cookie's decryption and
signature check are remembered per cookie value, and the session row per session id for a few
seconds. Sign-out and refresh drop the entry on every instance (through pub/sub, see
api.users.service.watch_session_changes); a broker reconnect clears everything, since
notices may have been lost meanwhile. The TTL bounds how long a lost notice could matter.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from api.core.security import TokenClaims
from api.users.views import Authenticated, UserView


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A cookie's verified claims, with its ids parsed."""

    claims: TokenClaims
    session_id: uuid.UUID
    user_id: uuid.UUID


class TokenCache:
    """Verified tokens by cookie value: the same value always decrypts to the same claims, so
    an entry never goes stale (expiry is still checked on every use)."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._tokens: dict[str, VerifiedToken] = {}

    def get(self, cookie_value: str) -> VerifiedToken | None:
        return self._tokens.get(cookie_value)

    def put(self, cookie_value: str, token: VerifiedToken) -> None:
        if len(self._tokens) >= self.max_entries:
            # Oldest first: dicts keep insertion order.
            del self._tokens[next(iter(self._tokens))]
        self._tokens[cookie_value] = token


@dataclass(slots=True)
class _Entry:
    auth: Authenticated
    fresh_until: float


class SessionCache:
    """Live sessions by id, each kept at most `ttl` seconds."""

    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[uuid.UUID, _Entry] = {}
        # Bumped by every invalidation: a read that started before one must not be cached,
        # or a session revoked while it was being read could live on for a whole TTL.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: uuid.UUID, now: datetime) -> Authenticated | None:
        """The cached session, if still fresh and not expired."""
        if not self.ttl:
            return None
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry.fresh_until < time.monotonic() or entry.auth.session.expires_at <= now:
            del self._entries[session_id]
            return None
        return entry.auth

    def put(self, auth: Authenticated, *, generation: int) -> None:
        """Remember a session read from the database, unless something was invalidated since
        the read began."""
        if not self.ttl or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[auth.session.id] = _Entry(auth, time.monotonic() + self.ttl)

    def drop(self, session_id: uuid.UUID) -> None:
        """Forget one session (signed out or refreshed, here or on another instance)."""
        self.generation += 1
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session (after a broker reconnect, notices may have been lost)."""
        self.generation += 1
        self._entries.clear()


class UserDirectory:
    """User views by id and by name key. Names never change once taken, so entries stay true;
    bounded, oldest out."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._by_id: dict[uuid.UUID, UserView] = {}
        self._by_key: dict[str, UserView] = {}

    def get(self, user_id: uuid.UUID) -> UserView | None:
        return self._by_id.get(user_id)

    def get_by_key(self, name_key: str) -> UserView | None:
        return self._by_key.get(name_key)

    def put(self, user: UserView, name_key: str | None = None) -> None:
        if len(self._by_id) >= self.max_entries:
            del self._by_id[next(iter(self._by_id))]
        self._by_id[user.id] = user
        if name_key is not None:
            if len(self._by_key) >= self.max_entries:
                del self._by_key[next(iter(self._by_key))]
            self._by_key[name_key] = user
