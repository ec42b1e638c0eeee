"""Accounts: sign-up, sign-in, sessions and the checks every authenticated request makes."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from api.core import security
from api.core.db import Database, parse_uuid, utcnow
from api.core.errors import BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from api.core.pubsub import RESYNC, PubSub
from api.core.ratelimit import RateLimiter
from api.core.security import Keys, TokenClaims
from api.users import store
from api.users.cache import SessionCache, TokenCache, UserDirectory, VerifiedToken
from api.users.constants import (
    NAME_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    SESSION_REFRESHED,
    SESSION_REVOKED,
    SESSIONS_CHANNEL,
    SIGN_IN_FAILED,
    USER_AGENT_MAX_LENGTH,
    session_channel,
)
from api.users.names import name_key, skeleton, validate_name
from api.users.passwords import PasswordHasher
from api.users.views import Authenticated, SessionRecord, UserView

log = logging.getLogger(__name__)

SESSION_ENDED = "Your session has ended; sign in again."
ACCOUNT_DISABLED = "account disabled: an operator has disabled this account."
NAME_TAKEN = "That name is taken, or looks too much like one that is."


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A freshly signed session: the cookie value to set and when it expires."""

    user: UserView
    session: SessionRecord
    cookie_value: str
    expires_at: datetime


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


def _clip_user_agent(user_agent: str | None) -> str | None:
    return user_agent[:USER_AGENT_MAX_LENGTH] if user_agent else None


def _issue(user: UserView, session: SessionRecord, *, keys: Keys) -> IssuedSession:
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


def _new_session(user_id: uuid.UUID, *, ttl: timedelta, user_agent: str | None) -> SessionRecord:
    now = utcnow()
    return SessionRecord(
        id=uuid.uuid4(),
        user_id=user_id,
        jti=security.new_token_id(),
        created_at=now,
        # Whole seconds, because the JWT's exp claim has no fractions.
        expires_at=(now + ttl).replace(microsecond=0),
        revoked_at=None,
        user_agent=_clip_user_agent(user_agent),
    )


async def sign_up(
    *,
    db: Database,
    hasher: PasswordHasher,
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
    key, look = name_key(display_name), skeleton(display_name)
    if await store.name_in_use(db, name_key=key, skeleton_key=look):
        raise Conflict(NAME_TAKEN)
    password_hash = await hasher.hash(password, iterations=iterations)
    user = UserView(id=uuid.uuid4(), name=display_name, created_at=utcnow())
    session = _new_session(user.id, ttl=ttl, user_agent=user_agent)
    await store.create_user(
        db,
        user=user,
        name_key=key,
        skeleton_key=look,
        password_hash=password_hash,
        session=session,
    )
    return _issue(user, session, keys=keys)


async def _check_password(
    *,
    db: Database,
    hasher: PasswordHasher,
    password: str,
    iterations: int,
    account_key: str,
    searchable: bool,
) -> tuple[UserView, str] | None:
    """The account's user and hash if the password is right; the same work whether or not the
    account exists."""
    account = None
    if searchable and len(password) <= PASSWORD_MAX_LENGTH:
        account = await store.account_by_key(db, account_key)
    encoded = account.password_hash if account else await hasher.decoy(iterations=iterations)
    # Lone surrogates cannot be encoded; such a password matches nothing but costs the same.
    encodable = not _has_lone_surrogate(password)
    candidate = password[:PASSWORD_MAX_LENGTH] if encodable else "-"
    valid = await hasher.verify(candidate, encoded, iterations=iterations) and encodable
    if account is None or not valid:
        return None
    return account.user, account.password_hash


async def sign_in(
    *,
    db: Database,
    hasher: PasswordHasher,
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
    account_key = name_key(name)[: 4 * NAME_MAX_LENGTH] if searchable else "-"
    if limiter is not None:
        await limiter.check(limiter.limits.sign_in_per_address, address)
        await limiter.acquire(limiter.limits.sign_in, account_key)
    guard = (
        limiter.in_flight(limiter.limits.sign_in_per_address, address)
        if limiter is not None
        else contextlib.nullcontext()
    )
    async with guard:
        found = await _check_password(
            db=db,
            hasher=hasher,
            password=password,
            iterations=iterations,
            account_key=account_key,
            searchable=searchable,
        )
    if found is None:
        if limiter is not None:
            await limiter.count(limiter.limits.sign_in_per_address, address)
        raise Unauthenticated(SIGN_IN_FAILED)
    user, password_hash = found
    if limiter is not None:
        await limiter.reset(limiter.limits.sign_in, account_key)
    new_hash = None
    if security.password_needs_rehash(password_hash, iterations=iterations):
        # The iteration count was raised since this hash was made: upgrade it now.
        new_hash = await hasher.hash(password, iterations=iterations)
    session = _new_session(user.id, ttl=ttl, user_agent=user_agent)
    if not await store.add_session(db, session=session, new_password_hash=new_hash):
        # Told only to whoever knows the password: the check runs after it.
        raise Forbidden(ACCOUNT_DISABLED)
    return _issue(user, session, keys=keys)


def read_token(cookie_value: str, *, keys: Keys) -> TokenClaims:
    """Decrypt a cookie value and verify the JWT inside; Unauthenticated on any failure."""
    try:
        token = security.decrypt_cookie(cookie_value, key=keys.cookie)
        return security.decode_token(token, key=keys.jwt)
    except security.InvalidToken as error:
        raise Unauthenticated("Your session is invalid; sign in again.") from error


def _verified(cookie_value: str, *, keys: Keys, tokens: TokenCache | None) -> VerifiedToken:
    token = tokens.get(cookie_value) if tokens is not None else None
    if token is None:
        claims = read_token(cookie_value, keys=keys)
        try:
            token = VerifiedToken(
                claims=claims,
                # The driver's UUID type: looked up and compared on every request.
                session_id=parse_uuid(claims.session_id),
                user_id=parse_uuid(claims.user_id),
            )
        except ValueError as error:
            raise Unauthenticated() from error
        if tokens is not None:
            tokens.put(cookie_value, token)
    elif token.claims.expires_at <= utcnow():
        # Verified once, but the token has expired since.
        raise Unauthenticated("Your session is invalid; sign in again.")
    return token


async def authenticate(
    *,
    db: Database,
    keys: Keys,
    cookie_value: str,
    tokens: TokenCache | None = None,
    sessions: SessionCache | None = None,
) -> Authenticated:
    """Resolve a cookie value to its live session and user; Unauthenticated otherwise.

    Every authenticated request runs this. With the caches, a session seen in the last few
    seconds costs no database round trip and no cryptography.
    """
    token = _verified(cookie_value, keys=keys, tokens=tokens)
    session_id, user_id = token.session_id, token.user_id
    now = utcnow()
    auth = sessions.get(session_id, now) if sessions is not None else None
    if auth is None:
        generation = sessions.generation if sessions is not None else 0
        loaded = await store.load_session(db, session_id=session_id, user_id=user_id)
        if loaded is None:
            raise Unauthenticated(SESSION_ENDED)
        auth = Authenticated(user=loaded[1], session=loaded[0])
        if auth.session.revoked_at is None and sessions is not None:
            sessions.put(auth, generation=generation)
    if (
        auth.session.revoked_at is not None
        or auth.session.expires_at <= now
        or auth.session.jti != token.claims.jti
        or auth.user.id != user_id
    ):
        # A revoked session, an expired one, or a token that a refresh replaced.
        raise Unauthenticated(SESSION_ENDED)
    return auth


async def _announce(pubsub: PubSub | None, session_id: uuid.UUID, signal: str) -> None:
    if pubsub is not None:
        # Sockets of this session (any instance) and every instance's session cache.
        await pubsub.publish(session_channel(session_id), signal)
        await pubsub.publish(SESSIONS_CHANNEL, str(session_id))


async def sign_out(
    *,
    db: Database,
    session_id: uuid.UUID,
    pubsub: PubSub | None = None,
    sessions: SessionCache | None = None,
) -> None:
    """Revoke a session: its tokens stop working at once and its sockets close, on any instance."""
    await store.revoke_session(db, session_id=session_id, at=utcnow())
    if sessions is not None:
        sessions.drop(session_id)
    await _announce(pubsub, session_id, SESSION_REVOKED)


async def revoke_session(
    *,
    db: Database,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    pubsub: PubSub | None = None,
    sessions: SessionCache | None = None,
) -> None:
    """Revoke one of the user's live sessions (a lost or stolen device): as sign-out does,
    on every instance. NOT_FOUND unless it is one of theirs and still live (another user's
    session is not told apart from none, so ids cannot be probed)."""
    live = await store.active_sessions(db, user_id=user_id, now=utcnow())
    if not any(session.id == session_id for session in live):
        raise NotFound("No such session.")
    await sign_out(db=db, session_id=session_id, pubsub=pubsub, sessions=sessions)


async def refresh_session(
    *,
    db: Database,
    keys: Keys,
    auth: Authenticated,
    ttl: timedelta,
    pubsub: PubSub | None = None,
    sessions: SessionCache | None = None,
) -> IssuedSession:
    """Give the current session a new token (new jti and expiry); the old token stops working."""
    expires_at = (utcnow() + ttl).replace(microsecond=0)
    session = await store.replace_token(
        db,
        session_id=auth.session.id,
        old_jti=auth.session.jti,
        new_jti=security.new_token_id(),
        expires_at=expires_at,
    )
    if session is None:
        # A concurrent refresh or sign-out got there first.
        raise Unauthenticated(SESSION_ENDED)
    if sessions is not None:
        sessions.drop(session.id)
    # Open sockets of this session move their deadline to the new expiry.
    await _announce(pubsub, session.id, SESSION_REFRESHED)
    return _issue(auth.user, session, keys=keys)


async def watch_session_changes(*, pubsub: PubSub, sessions: SessionCache) -> None:
    """Keep this instance's session cache true: drop what any instance signs out or refreshes,
    and everything after a broker reconnect (notices may have been lost). Runs until
    cancelled."""
    async with pubsub.subscribe(SESSIONS_CHANNEL) as notices:
        async for notice in notices:
            if notice is RESYNC:
                sessions.clear()
                continue
            try:
                sessions.drop(uuid.UUID(str(notice)))
            except ValueError:
                log.warning("ignoring a malformed session notice")


def _could_be_a_name(name: str) -> bool:
    # No account can have such a name; and NUL or lone surrogates must never reach the database.
    return (
        0 < len(name) <= 4 * NAME_MAX_LENGTH
        and "\x00" not in name
        and not _has_lone_surrogate(name)
    )


async def find_user_by_name(
    *, db: Database, name: str, directory: UserDirectory | None = None
) -> UserView | None:
    """The user with that name (compared as the uniqueness key), or None."""
    if not _could_be_a_name(name):
        return None
    key = name_key(name)
    user = directory.get_by_key(key) if directory is not None else None
    if user is None:
        user = await store.user_by_key(db, key)
        if user is not None and directory is not None:
            directory.put(user, key)
    return user


async def user_views(
    *, db: Database, ids: Iterable[uuid.UUID], directory: UserDirectory | None = None
) -> dict[uuid.UUID, UserView]:
    """Views of these users by id (senders and members), from the directory where it can."""
    found: dict[uuid.UUID, UserView] = {}
    missing = []
    for user_id in ids:
        if user_id in found:
            continue
        user = directory.get(user_id) if directory is not None else None
        if user is None:
            missing.append(user_id)
        else:
            found[user_id] = user
    if missing:
        for user in await store.users_by_ids(db, set(missing)):
            found[user.id] = user
            if directory is not None:
                directory.put(user)
    return found


async def list_active_sessions(*, db: Database, user_id: uuid.UUID) -> list[SessionRecord]:
    """The user's sessions that are neither revoked nor expired, newest first."""
    return list(await store.active_sessions(db, user_id=user_id, now=utcnow()))
