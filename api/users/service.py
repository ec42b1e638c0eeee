"""Accounts: sign-up, sign-in, sessions and the checks every authenticated request makes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from api.core import security
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Conflict, Unauthenticated
from api.core.pubsub import RESYNC, PubSub
from api.core.ratelimit import RateLimiter
from api.core.security import Keys, TokenClaims
from api.users.constants import (
    NAME_MAX_LENGTH,
    NAME_MIN_LENGTH,
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    SESSION_REFRESHED,
    SESSION_REVOKED,
    SIGN_IN_FAILED,
    USER_AGENT_MAX_LENGTH,
    session_channel,
)
from api.users.models import User, UserSession


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who is calling: the user and the session (device) the token belongs to."""

    user: User
    session: UserSession


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A freshly signed session: the cookie value to set and when it expires."""

    user: User
    session: UserSession
    cookie_value: str
    expires_at: datetime


def normalize_name(name: str) -> str:
    """The display form of a name: Unicode NFKC (fullwidth letters become ASCII)."""
    return unicodedata.normalize("NFKC", name)


def name_key(name: str) -> str:
    """The uniqueness key of a name: NFKC, casefolded, NFKC again (casefold can denormalize)."""
    return unicodedata.normalize("NFKC", normalize_name(name).casefold())


def validate_name(name: str) -> str:
    """Return the normalized name, or raise BadUserInput saying what is wrong."""
    normalized = normalize_name(name)
    if not NAME_MIN_LENGTH <= len(normalized) <= NAME_MAX_LENGTH:
        raise BadUserInput(f"Name must be {NAME_MIN_LENGTH} to {NAME_MAX_LENGTH} characters long.")
    if not all(ch.isalpha() or ch in "0123456789_.-" for ch in normalized):
        raise BadUserInput("Name may contain only letters, digits, '_', '.' and '-'.")
    return normalized


def validate_password(password: str) -> None:
    """Raise BadUserInput unless the password has an acceptable length."""
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise BadUserInput(
            f"Password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters long."
        )
    if _has_lone_surrogate(password):
        raise BadUserInput("Password must be valid Unicode (no lone surrogates).")


def _has_lone_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


@lru_cache(maxsize=8)
def _decoy_hash(pepper: bytes, iterations: int) -> str:
    # Verified against when the name is unknown, so both failures cost the same work.
    return security.hash_password("decoy password", pepper=pepper, iterations=iterations)


# At most this many hashes at once, whatever the load: sign-ups and sign-ins queue here instead
# of filling the default thread pool that everything else off the loop shares.
_HASHES_AT_ONCE = max(1, os.cpu_count() or 1)
_hashing_gates: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _hashing() -> asyncio.Semaphore:
    # One gate per event loop: a semaphore belongs to the loop that first waits on it.
    loop = asyncio.get_running_loop()
    gate = _hashing_gates.get(loop)
    if gate is None:
        for stale in [other for other in _hashing_gates if other.is_closed()]:
            del _hashing_gates[stale]
        gate = _hashing_gates[loop] = asyncio.Semaphore(_HASHES_AT_ONCE)
    return gate


async def _decoy(*, keys: Keys, iterations: int) -> str:
    # The first call computes a full-cost hash: off the loop like every other hash.
    async with _hashing():
        return await asyncio.to_thread(_decoy_hash, keys.pepper, iterations)


async def _hash(password: str, *, keys: Keys, iterations: int) -> str:
    # PBKDF2 at 600k iterations takes hundreds of milliseconds: keep it off the event loop.
    async with _hashing():
        return await asyncio.to_thread(
            security.hash_password, password, pepper=keys.pepper, iterations=iterations
        )


async def _verify(password: str, encoded: str, *, keys: Keys) -> bool:
    async with _hashing():
        return await asyncio.to_thread(
            security.verify_password, password, encoded, pepper=keys.pepper
        )


def _clip_user_agent(user_agent: str | None) -> str | None:
    return user_agent[:USER_AGENT_MAX_LENGTH] if user_agent else None


def _issue(user: User, session: UserSession, *, keys: Keys) -> IssuedSession:
    claims = TokenClaims(
        user_id=str(user.id),
        session_id=str(session.id),
        jti=session.jti,
        issued_at=utcnow(),
        expires_at=session.expires_at,
    )
    token = security.encode_token(claims, key=keys.jwt)
    cookie_value = security.encrypt_cookie(token, key=keys.cookie)
    return IssuedSession(
        user=user, session=session, cookie_value=cookie_value, expires_at=session.expires_at
    )


def _new_session(user: User, *, ttl: timedelta, user_agent: str | None) -> UserSession:
    now = utcnow()
    # Whole seconds, because the JWT's exp claim has no fractions.
    expires_at = (now + ttl).replace(microsecond=0)
    return UserSession(
        user_id=user.id,
        jti=security.new_token_id(),
        created_at=now,
        expires_at=expires_at,
        user_agent=_clip_user_agent(user_agent),
    )


async def sign_up(
    *,
    db: Database,
    keys: Keys,
    name: str,
    password: str,
    iterations: int,
    ttl: timedelta,
    user_agent: str | None = None,
    limiter: RateLimiter | None = None,
    address: str = "unknown",
) -> IssuedSession:
    """Create an account and its first session; CONFLICT when the name is taken.

    Every attempt from an address counts against its sign-up limit before any hashing, so a
    flood of sign-ups cannot keep the hashing threads busy.
    """
    display_name = validate_name(name)
    validate_password(password)
    if limiter is not None:
        await limiter.acquire(limiter.limits.sign_up_per_address, address)
    key = name_key(display_name)
    async with db.session() as session:
        taken = await session.scalar(select(col(User.id)).where(col(User.name_key) == key))
    if taken is not None:
        raise Conflict("That name is taken.")
    password_hash = await _hash(password, keys=keys, iterations=iterations)
    user = User(name=display_name, name_key=key, password_hash=password_hash)
    try:
        async with db.session(write=True) as session:
            session.add(user)
            await session.flush()
            user_session = _new_session(user, ttl=ttl, user_agent=user_agent)
            session.add(user_session)
    except IntegrityError as error:
        # Two sign-ups for the same name raced; the unique index decided.
        raise Conflict("That name is taken.") from error
    return _issue(user, user_session, keys=keys)


async def _check_password(
    *,
    db: Database,
    keys: Keys,
    password: str,
    iterations: int,
    account: str,
    searchable: bool,
) -> User | None:
    """The account's user if the password is right; the same work whether or not it exists."""
    user = None
    if searchable and len(password) <= PASSWORD_MAX_LENGTH:
        async with db.session() as session:
            user = await session.scalar(select(User).where(col(User.name_key) == account))
    encoded = user.password_hash if user else await _decoy(keys=keys, iterations=iterations)
    # Lone surrogates cannot be encoded; such a password matches nothing but costs the same.
    encodable = not _has_lone_surrogate(password)
    candidate = password[:PASSWORD_MAX_LENGTH] if encodable else "-"
    valid = await _verify(candidate, encoded, keys=keys) and encodable
    return user if valid else None


async def sign_in(
    *,
    db: Database,
    keys: Keys,
    name: str,
    password: str,
    iterations: int,
    ttl: timedelta,
    user_agent: str | None = None,
    limiter: RateLimiter | None = None,
    address: str = "unknown",
) -> IssuedSession:
    """Open a new session; unknown name and wrong password fail alike, at the same cost.

    Over either limit the attempt is refused (RATE_LIMITED) before any password is checked.
    An account's attempt is counted before its password is checked, so parallel guesses get
    no more tries than the limit (a success clears the count). An address's failures are
    counted after the check, so its people can sign in as often as they like, and its
    checks in flight are capped, so parallel guesses add only that many tries.
    """
    searchable = _could_be_a_name(name)
    account = name_key(name)[: 4 * NAME_MAX_LENGTH] if searchable else "-"
    if limiter is not None:
        await limiter.check(limiter.limits.sign_in_per_address, address)
        await limiter.acquire(limiter.limits.sign_in, account)
    guard = (
        limiter.in_flight(limiter.limits.sign_in_per_address, address)
        if limiter is not None
        else contextlib.nullcontext()
    )
    async with guard:
        user = await _check_password(
            db=db,
            keys=keys,
            password=password,
            iterations=iterations,
            account=account,
            searchable=searchable,
        )
    if user is None:
        if limiter is not None:
            await limiter.count(limiter.limits.sign_in_per_address, address)
        raise Unauthenticated(SIGN_IN_FAILED)
    if limiter is not None:
        await limiter.reset(limiter.limits.sign_in, account)
    new_hash = None
    if security.password_needs_rehash(user.password_hash, iterations=iterations):
        # The iteration count was raised since this hash was made: upgrade it now.
        new_hash = await _hash(password, keys=keys, iterations=iterations)
    async with db.session(write=True) as session:
        if new_hash is not None:
            await session.execute(
                update(User).where(col(User.id) == user.id).values(password_hash=new_hash)
            )
            user.password_hash = new_hash
        user_session = _new_session(user, ttl=ttl, user_agent=user_agent)
        session.add(user_session)
    return _issue(user, user_session, keys=keys)


def read_token(cookie_value: str, *, keys: Keys) -> TokenClaims:
    """Decrypt a cookie value and verify the JWT inside; Unauthenticated on any failure."""
    try:
        token = security.decrypt_cookie(cookie_value, key=keys.cookie)
        return security.decode_token(token, key=keys.jwt)
    except security.InvalidToken as error:
        raise Unauthenticated("Your session is invalid; sign in again.") from error


async def authenticate(*, db: Database, keys: Keys, cookie_value: str) -> Authenticated:
    """Resolve a cookie value to its live session and user; Unauthenticated otherwise."""
    claims = read_token(cookie_value, keys=keys)
    try:
        session_id = uuid.UUID(claims.session_id)
        user_id = uuid.UUID(claims.user_id)
    except ValueError as error:
        raise Unauthenticated() from error
    # Every authenticated request runs this: one Core query, no ORM session.
    sessions, users = UserSession.__table__, User.__table__  # type: ignore[attr-defined]
    async with db.read() as connection:
        row = (
            await connection.execute(
                select(sessions, users.c.name, users.c.name_key, users.c.password_hash)
                .add_columns(users.c.created_at.label("user_created_at"))
                .join(users, users.c.id == sessions.c.user_id)
                .where(sessions.c.id == session_id, sessions.c.user_id == user_id)
            )
        ).first()
    if row is None:
        raise Unauthenticated("Your session has ended; sign in again.")
    user_session = UserSession(
        id=row.id,
        user_id=row.user_id,
        jti=row.jti,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        user_agent=row.user_agent,
    )
    user = User(
        id=row.user_id,
        name=row.name,
        name_key=row.name_key,
        password_hash=row.password_hash,
        created_at=row.user_created_at,
    )
    if (
        user_session.revoked_at is not None
        or user_session.expires_at <= utcnow()
        or user_session.jti != claims.jti
    ):
        # A revoked session, an expired one, or a token that a refresh replaced.
        raise Unauthenticated("Your session has ended; sign in again.")
    return Authenticated(user=user, session=user_session)


async def sign_out(*, db: Database, pubsub: PubSub | None = None, session_id: uuid.UUID) -> None:
    """Revoke a session: its tokens stop working at once and its sockets close, on any instance."""
    async with db.session(write=True) as session:
        await session.execute(
            update(UserSession)
            .where(col(UserSession.id) == session_id, col(UserSession.revoked_at).is_(None))
            .values(revoked_at=utcnow())
        )
    if pubsub is not None:
        await pubsub.publish(session_channel(session_id), SESSION_REVOKED)


async def refresh_session(
    *, db: Database, pubsub: PubSub | None = None, keys: Keys, auth: Authenticated, ttl: timedelta
) -> IssuedSession:
    """Give the current session a new token (new jti and expiry); the old token stops working."""
    now = utcnow()
    jti = security.new_token_id()
    expires_at = (now + ttl).replace(microsecond=0)
    async with db.session(write=True) as session:
        result = await session.execute(
            update(UserSession)
            .where(
                col(UserSession.id) == auth.session.id,
                col(UserSession.jti) == auth.session.jti,
                col(UserSession.revoked_at).is_(None),
            )
            .values(jti=jti, expires_at=expires_at)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            # A concurrent refresh or sign-out got there first.
            raise Unauthenticated("Your session has ended; sign in again.")
        user_session = await session.get(UserSession, auth.session.id, populate_existing=True)
    assert user_session is not None
    if pubsub is not None:
        # Open sockets of this session move their deadline to the new expiry.
        await pubsub.publish(session_channel(auth.session.id), SESSION_REFRESHED)
    return _issue(auth.user, user_session, keys=keys)


def _could_be_a_name(name: str) -> bool:
    # No account can have such a name; and NUL or lone surrogates must never reach the database.
    return (
        0 < len(name) <= 4 * NAME_MAX_LENGTH
        and "\x00" not in name
        and not _has_lone_surrogate(name)
    )


async def find_user_by_name(*, db: Database, name: str) -> User | None:
    """The user with that name (compared as the uniqueness key), or None."""
    if not _could_be_a_name(name):
        return None
    async with db.session() as session:
        return await session.scalar(select(User).where(col(User.name_key) == name_key(name)))


async def list_active_sessions(*, db: Database, user_id: uuid.UUID) -> list[UserSession]:
    """The user's sessions that are neither revoked nor expired, newest first."""
    async with db.session() as session:
        rows = await session.scalars(
            select(UserSession)
            .where(
                col(UserSession.user_id) == user_id,
                col(UserSession.revoked_at).is_(None),
                col(UserSession.expires_at) > utcnow(),
            )
            .order_by(col(UserSession.created_at).desc())
        )
        return list(rows.all())


async def _session_deadline(db: Database, session_id: uuid.UUID) -> datetime | None:
    """When the session ends: its expiry, or None when it is revoked or gone."""
    async with db.session() as session:
        row = await session.get(UserSession, session_id)
    if row is None or row.revoked_at is not None:
        return None
    return row.expires_at


async def wait_for_session_end(*, db: Database, pubsub: PubSub, session_id: uuid.UUID) -> str:
    """Return "revoked" or "expired" once the session ends (a refresh moves the deadline)."""
    async with pubsub.subscribe(session_channel(session_id)) as signals:
        # Read after subscribing, so a sign-out in between is not missed.
        deadline = await _session_deadline(db, session_id)
        events = aiter(signals)
        while True:
            if deadline is None:
                return "revoked"
            remaining = (deadline - utcnow()).total_seconds()
            if remaining <= 0:
                return "expired"
            try:
                async with asyncio.timeout(remaining):
                    signal = await anext(events)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                return "closed"
            if signal == SESSION_REVOKED:
                deadline = None
            elif signal in (SESSION_REFRESHED, RESYNC):
                deadline = await _session_deadline(db, session_id)
