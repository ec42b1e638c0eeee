"""Accounts: sign-up, sign-in, sessions and the checks every authenticated request makes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from api.core import security
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Conflict, Forbidden, NotFound, Unauthenticated
from api.core.pubsub import RESYNC, PubSub, Subscription
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
                session_id=uuid.UUID(claims.session_id),
                user_id=uuid.UUID(claims.user_id),
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


# A socket's session is read again when there is a reason: a refresh, a broker reconnect
# (notices may have been lost), and periodically for every session of the process together.
# Reads that fail are retried with backoff and jitter; a session that cannot be verified for
# SESSION_VERIFY_TIMEOUT seconds ends its sockets ("unverifiable").
READ_TIMEOUT = 5.0
RETRY_FIRST = 0.2
RETRY_MAX = 5.0
# After a broker reconnect every session of the process is read again: spread over this many
# seconds, the reads do not all queue for the pool together.
RESYNC_SPREAD = 2.0
UNVERIFIABLE = "unverifiable"
REVOKED = "revoked"
EXPIRED = "expired"

SocketEnd = Callable[[str], None]
"""Called once with the reason ("revoked", "expired" or "unverifiable") when a socket's
session ends; it closes that socket."""


def _retry_delay(failures: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))  # noqa: S311


class _Session:
    """One session with sockets on this process: what was last read of it, and its timers."""

    __slots__ = (
        "deadline",
        "expiry",
        "failures",
        "id",
        "known",
        "read_again",
        "read_at",
        "read_timer",
        "reading",
        "sockets",
        "subscription",
        "verified_at",
    )

    def __init__(self, session_id: uuid.UUID, verified_at: float) -> None:
        self.id = session_id
        self.sockets: set[SocketEnd] = set()
        self.subscription: Subscription | None = None
        # None until read: a session counts as verified from the moment its first socket came.
        self.deadline: datetime | None = None
        self.known = False
        self.verified_at = verified_at
        self.failures = 0
        self.read_at = 0.0
        self.read_timer: asyncio.TimerHandle | None = None
        self.reading: asyncio.Task[None] | None = None
        self.read_again = False
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def read_pending(self) -> bool:
        return self.read_timer is not None or self.reading is not None


class SessionRegistry:
    """Every socket of this process by session, and what ends them: one structure for the
    whole process (built by the app's lifespan), with no task or coroutine per socket.

    A socket closes when its session is revoked (a pub/sub notice, or a read that finds it
    gone), when it expires (a timer at its deadline), or when it cannot be verified for
    `verify_for` seconds (the database unreachable). Each session's channel is joined once,
    however many sockets it has; every session is read again together, one query per
    interval. Without the periodic read a lost sign-out notice, or a database that stopped
    answering, would go unnoticed.
    """

    def __init__(
        self,
        *,
        db: Database,
        pubsub: PubSub,
        verify_for: float,
        interval: float | None = None,
    ) -> None:
        self.db = db
        self.pubsub = pubsub
        self.verify_for = verify_for
        self.interval = interval if interval is not None else max(verify_for / 3, 0.2)
        self._sessions: dict[uuid.UUID, _Session] = {}
        # Short-lived work (a join, a read, a leave), held so it is not collected mid-way and
        # so `close` can end it.
        self._work: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def socket_count(self) -> int:
        """How many sockets are followed."""
        return sum(len(entry.sockets) for entry in self._sessions.values())

    def add(self, session_id: uuid.UUID, on_end: SocketEnd) -> None:
        """Follow a socket's session: `on_end` is called once if the session ends while the
        socket is registered (call `discard` when the socket goes)."""
        entry = self._sessions.get(session_id)
        if entry is None:
            loop = asyncio.get_running_loop()
            entry = self._sessions[session_id] = _Session(session_id, loop.time())
            self._spawn(self._join(entry))
        entry.sockets.add(on_end)

    def discard(self, session_id: uuid.UUID, on_end: SocketEnd) -> None:
        """Stop following a socket (it closed); its session's last socket takes the session
        along."""
        entry = self._sessions.get(session_id)
        if entry is None:
            return
        entry.sockets.discard(on_end)
        if not entry.sockets:
            self._forget(entry)

    async def close(self) -> None:
        """Stop every timer and piece of work (at shutdown); sockets stay open."""
        self._closed = True
        for entry in list(self._sessions.values()):
            self._forget(entry)
        work = list(self._work)
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)

    async def _join(self, entry: _Session) -> None:
        subscription = await self.pubsub.join(
            session_channel(entry.id), functools.partial(self._heard, entry)
        )
        if self._sessions.get(entry.id) is not entry:
            await self.pubsub.leave(subscription)
            return
        entry.subscription = subscription
        # Read first thing after subscribing, so a sign-out in between is not missed.
        self._read(entry, at=asyncio.get_running_loop().time())

    def _heard(self, entry: _Session, signal: str | object) -> None:
        """A notice on the session's channel (or RESYNC after a broker reconnect)."""
        if self._sessions.get(entry.id) is not entry:
            return
        now = asyncio.get_running_loop().time()
        if signal == SESSION_REVOKED:
            self._end(entry, REVOKED)
        elif signal == SESSION_REFRESHED:
            self._read(entry, at=now)
        elif signal is RESYNC:
            # Every session of the process hears this at once: spread the reads.
            self._read(entry, at=now + random.uniform(0, RESYNC_SPREAD))  # noqa: S311

    def _read(self, entry: _Session, *, at: float) -> None:
        """Read the session at `at` (or sooner, if a read is already set for sooner)."""
        if entry.reading is not None:
            # A read in flight may have begun before the change that asks for this one.
            entry.read_again = True
            return
        if entry.read_timer is not None:
            if entry.read_at <= at:
                return
            entry.read_timer.cancel()
        entry.read_at = at
        entry.read_timer = asyncio.get_running_loop().call_at(at, self._start_read, entry)

    def _start_read(self, entry: _Session) -> None:
        entry.read_timer = None
        entry.reading = self._spawn(self._read_now(entry))

    async def _read_now(self, entry: _Session) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                deadline = await store.session_deadline(self.db, session_id=entry.id)
        except Exception as error:  # noqa: BLE001 - retried with backoff and jitter
            entry.reading = None
            if self._sessions.get(entry.id) is not entry:
                return
            entry.failures += 1
            log.info("cannot read session %s (%s); retrying", entry.id, error)
            if loop.time() - entry.verified_at >= self.verify_for:
                self._end(entry, UNVERIFIABLE)
                return
            entry.read_again = False
            self._read(entry, at=loop.time() + _retry_delay(entry.failures))
            return
        entry.reading = None
        if self._sessions.get(entry.id) is not entry:
            return
        entry.failures = 0
        if entry.read_again:
            entry.read_again = False
            self._read(entry, at=loop.time())
        self._verified(entry, deadline, loop.time())

    def _verified(self, entry: _Session, deadline: datetime | None, now: float) -> None:
        """What a read found: the session's deadline, or None when it is revoked or gone."""
        entry.verified_at = now
        entry.known = True
        if deadline is None:
            self._end(entry, REVOKED)
            return
        if deadline != entry.deadline or entry.expiry is None:
            entry.deadline = deadline
            self._arm_expiry(entry)

    def _arm_expiry(self, entry: _Session) -> None:
        if entry.expiry is not None:
            entry.expiry.cancel()
        assert entry.deadline is not None
        delay = max(0.0, (entry.deadline - utcnow()).total_seconds())
        entry.expiry = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    def _expire(self, entry: _Session) -> None:
        entry.expiry = None
        if self._sessions.get(entry.id) is not entry or entry.read_pending:
            # The read under way decides (and sets the timer again).
            return
        if entry.deadline is not None and entry.deadline <= utcnow():
            self._end(entry, EXPIRED)
        else:
            # The wall clock and the loop's clock drifted apart: look again at the deadline.
            self._arm_expiry(entry)

    def _end(self, entry: _Session, reason: str) -> None:
        """The session ended: tell each of its sockets, once."""
        sockets = entry.sockets
        entry.sockets = set()
        self._forget(entry)
        for on_end in sockets:
            try:
                on_end(reason)
            except Exception:  # one socket's failure must not keep the others open
                log.exception("closing a socket of session %s failed", entry.id)

    def _forget(self, entry: _Session) -> None:
        if self._sessions.get(entry.id) is entry:
            del self._sessions[entry.id]
        for timer in (entry.read_timer, entry.expiry):
            if timer is not None:
                timer.cancel()
        entry.read_timer = entry.expiry = None
        # A read in flight finds the session gone and does nothing more.
        subscription, entry.subscription = entry.subscription, None
        if subscription is not None and not self._closed:
            self._spawn(self.pubsub.leave(subscription))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._work.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._work.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session registry work failed", exc_info=task.exception())

    async def run(self) -> None:
        """Read every session with sockets each interval, until cancelled."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            delay = self.interval if not failures else min(self.interval, _retry_delay(failures))
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))  # noqa: S311 - not crypto
            ids = list(self._sessions)
            try:
                deadlines: dict[uuid.UUID, datetime] = {}
                for start in range(0, len(ids), 1000):
                    async with asyncio.timeout(READ_TIMEOUT):
                        deadlines |= await store.session_deadlines(
                            self.db, session_ids=ids[start : start + 1000]
                        )
            except Exception as error:  # noqa: BLE001 - retried; sockets close past the limit
                failures += 1
                log.warning("cannot verify the sockets' sessions (%s); retrying", error)
                now = loop.time()
                for entry in list(self._sessions.values()):
                    if now - entry.verified_at >= self.verify_for:
                        self._end(entry, UNVERIFIABLE)
                continue
            failures = 0
            now = loop.time()
            for session_id in ids:
                found = self._sessions.get(session_id)
                if found is not None:
                    self._verified(found, deadlines.get(session_id), now)


async def purge_ended_sessions(*, db: Database, pubsub: PubSub | None = None) -> int:
    """Delete revoked and expired sessions, and close their sockets on every instance; how
    many were deleted."""
    ended = await store.delete_ended_sessions(db, now=utcnow())
    if pubsub is not None:
        for start in range(0, len(ended), 500):
            chunk = ended[start : start + 500]
            await pubsub.publish_many(
                [(session_channel(session_id), SESSION_REVOKED) for session_id in chunk]
                + [(SESSIONS_CHANNEL, str(session_id)) for session_id in chunk]
            )
    return len(ended)


async def purge_sessions_forever(
    *, db: Database, pubsub: PubSub | None, interval: float, done: asyncio.Event | None = None
) -> None:
    """Purge ended sessions every `interval` seconds until cancelled (the lifespan runs it);
    `done` is set after each purge."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.9, 1.0))  # noqa: S311 - not crypto
        try:
            purged = await purge_ended_sessions(db=db, pubsub=pubsub)
        except Exception as error:  # noqa: BLE001 - the next round tries again
            log.warning("purging ended sessions failed: %s", error)
            continue
        if purged:
            log.info("purged %d ended sessions", purged)
        if done is not None:
            done.set()
