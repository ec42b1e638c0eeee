"""Helpers of the accounts tests: raw HTTP exchanges, Set-Cookie parsing, tokens, database rows."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from sqlalchemy import select, update
from sqlmodel import col

from api.core import security
from api.core.db import Database
from api.core.security import Keys
from api.users.cache import SessionCache
from api.users.models import User, UserSession
from api.users.names import name_key

SESSION_COOKIE = "session"


@dataclass(frozen=True)
class SetCookie:
    """One parsed Set-Cookie header: name, value and attributes (keys lower-cased)."""

    name: str
    value: str
    attributes: dict[str, str | bool]

    def attribute(self, key: str) -> str | bool | None:
        return self.attributes.get(key.lower())


def parse_set_cookie(header: str) -> SetCookie:
    """Parse a raw Set-Cookie header without a cookie jar, so every attribute stays visible."""
    first, *rest = (part.strip() for part in header.split(";"))
    name, _, value = first.partition("=")
    attributes: dict[str, str | bool] = {}
    for part in rest:
        key, sep, attr_value = part.partition("=")
        attributes[key.strip().lower()] = attr_value.strip() if sep else True
    return SetCookie(name=name.strip(), value=value.strip().strip('"'), attributes=attributes)


def set_cookies(response: httpx.Response) -> list[SetCookie]:
    """Every Set-Cookie header of a response, parsed."""
    return [parse_set_cookie(header) for header in response.headers.get_list("set-cookie")]


def only_set_cookie(response: httpx.Response) -> SetCookie:
    """The single Set-Cookie header a response must carry."""
    cookies = set_cookies(response)
    assert len(cookies) == 1, response.headers.get_list("set-cookie")
    return cookies[0]


async def exchange(
    http: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[httpx.Response, dict[str, Any]]:
    """POST one operation; return the raw response (headers) and its JSON body.

    The body is encoded with ASCII escapes, so strings no UTF-8 encoder accepts (lone
    surrogates) still reach the server the way a hostile client would send them.
    """
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    content = json.dumps({"query": query, "variables": variables or {}})
    response = await http.post("/graphql", content=content, headers=headers, **kwargs)
    assert response.status_code == 200, (response.status_code, response.text)
    body: dict[str, Any] = response.json()
    return response, body


def cookie_header(value: str, name: str = SESSION_COOKIE) -> dict[str, str]:
    """Request headers that present a session cookie value (as a browser replaying it would)."""
    return {"Cookie": f"{name}={value}"}


def bearer_header(value: str) -> dict[str, str]:
    """Request headers of a non-browser client presenting the cookie value as a bearer token."""
    return {"Authorization": f"Bearer {value}"}


def error_code(body: dict[str, Any]) -> str | None:
    """The extensions.code of the single error of a response body."""
    errors = body.get("errors") or []
    assert len(errors) == 1, body
    code: str | None = errors[0].get("extensions", {}).get("code")
    return code


def token_of(cookie_value: str, keys: Keys) -> str:
    """The JWT inside an encrypted cookie value."""
    return security.decrypt_cookie(cookie_value, key=keys.cookie)


def claims_of(cookie_value: str, keys: Keys) -> dict[str, Any]:
    """The verified claims of the JWT inside an encrypted cookie value."""
    payload: dict[str, Any] = jwt.decode(
        token_of(cookie_value, keys), keys.jwt, algorithms=["HS256"]
    )
    return payload


def mint_cookie(
    payload: dict[str, Any],
    keys: Keys,
    *,
    algorithm: str = "HS256",
    jwt_key: bytes | None = None,
    cookie_key: bytes | None = None,
) -> str:
    """Build a cookie value by hand: sign `payload` and encrypt it (our keys unless overridden)."""
    # PyJWT's "none" algorithm takes an empty key (and signs nothing).
    signing_key: bytes | str = "" if algorithm == "none" else (jwt_key or keys.jwt)
    token = jwt.encode(payload, signing_key, algorithm=algorithm)
    return security.encrypt_cookie(token, key=cookie_key or keys.cookie)


async def user_row(db: Database, name: str) -> User:
    """The users row of a name."""
    async with db.session() as session:
        user = await session.scalar(select(User).where(col(User.name_key) == name_key(name)))
    assert user is not None, name
    return user


async def session_rows(db: Database, user_id: uuid.UUID | str) -> list[UserSession]:
    """Every session row of a user, oldest first."""
    async with db.session() as session:
        rows = await session.scalars(
            select(UserSession)
            .where(col(UserSession.user_id) == uuid.UUID(str(user_id)))
            .order_by(col(UserSession.created_at))
        )
        return list(rows.all())


async def session_row(db: Database, session_id: uuid.UUID | str) -> UserSession:
    """One session row by id."""
    async with db.session() as session:
        row = await session.get(UserSession, uuid.UUID(str(session_id)))
    assert row is not None, session_id
    return row


class AnnouncingDatabase(Database):
    """The run's database for tests that change rows directly, which knows the shared server's
    session cache: a tool that changes sessions behind the server's back must announce it, as
    sign-out and refresh do (unannounced, a change shows within SESSION_CACHE_TTL)."""

    def __init__(self, url: str, *, sessions: SessionCache, pool_size: int = 2) -> None:
        super().__init__(url, pool_size=pool_size)
        self.sessions = sessions


async def update_session(db: Database, session_id: uuid.UUID | str, **values: Any) -> None:
    """Change a session row behind the server's back (e.g. move expires_at into the past)."""
    async with db.session() as session:
        await session.execute(
            update(UserSession)
            .where(col(UserSession.id) == uuid.UUID(str(session_id)))
            .values(**values)
        )
    if isinstance(db, AnnouncingDatabase):
        db.sessions.drop(uuid.UUID(str(session_id)))
