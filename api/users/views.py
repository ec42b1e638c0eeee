"""Plain records of the accounts module: what the store returns and services hand on.

Rows become these frozen dataclasses, never ORM objects: they are cheap to build on hot paths,
safe to cache and to share between requests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class UserView:
    """What anyone may see of a user."""

    id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Account:
    """A user with the stored password hash: only sign-in reads this."""

    user: UserView
    password_hash: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A signed-in device; `jti` names the one token currently valid for it."""

    id: uuid.UUID
    user_id: uuid.UUID
    jti: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who is calling: the user and the session (device) the token belongs to."""

    user: UserView
    session: SessionRecord
