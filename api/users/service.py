"""Accounts: sign-up, sign-in, sessions and the checks every authenticated request makes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from api.core import security
from api.core.db import Database, utcnow
from api.core.errors import BadUserInput, Conflict, Forbidden, Unauthenticated
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


# A socket's session is verified again when there is a reason: a refresh, a broker reconnect
# (notices may have been lost), and periodically by the SessionWatch of the process. Reads that
# fail are retried with backoff and jitter; a session that cannot be verified for
# SESSION_VERIFY_TIMEOUT seconds ends the socket ("unverifiable").
READ_TIMEOUT = 5.0
RETRY_FIRST = 0.2
RETRY_MAX = 5.0
# After a broker reconnect every socket of the process re-reads its session at once: spread
# over this many seconds, the reads do not all queue for the pool together.
RESYNC_SPREAD = 2.0
UNVERIFIABLE = "unverifiable"


def _retry_delay(failures: int) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(RETRY_MAX, RETRY_FIRST * 2 ** (failures - 1)))  # noqa: S311


class _Watched:
    """One socket's view of its session: the deadline last read and when it was read."""

    __slots__ = ("changed", "deadline", "read", "session_id", "verified_at")

    def __init__(self, session_id: uuid.UUID, verified_at: float) -> None:
        self.session_id = session_id
        self.deadline: datetime | None = None
        self.verified_at = verified_at
        self.read = False
        self.changed = asyncio.Event()

    def verified(self, deadline: datetime | None, at: float) -> None:
        # The socket's watcher wakes only when there is something to decide: the first read,
        # or a deadline that moved (10,000 sockets woken at every periodic check cost 13% of
        # a core while idle).
        news = not self.read or deadline != self.deadline
        self.deadline = deadline
        self.verified_at = at
        self.read = True
        if news:
            self.changed.set()

    def doubt(self, now: float, limit: float) -> None:
        """Wake the watcher if the session has gone unverified too long (it then closes)."""
        if now - self.verified_at >= limit:
            self.changed.set()


class SessionWatch:
    """The sessions of every socket of this process, verified together: one query per
    interval for all of them (built and run by the app's lifespan).

    Without it a socket's session would only be read again on a notice; with the database
    down, nothing would notice that it can no longer be verified, and a lost sign-out notice
    would never be made up for.
    """

    def __init__(self, *, db: Database, verify_for: float, interval: float | None = None) -> None:
        self.db = db
        self.verify_for = verify_for
        self.interval = interval if interval is not None else max(verify_for / 3, 0.2)
        self._watched: dict[uuid.UUID, set[_Watched]] = {}

    def add(self, watched: _Watched) -> None:
        self._watched.setdefault(watched.session_id, set()).add(watched)

    def discard(self, watched: _Watched) -> None:
        same = self._watched.get(watched.session_id)
        if same is not None:
            same.discard(watched)
            if not same:
                del self._watched[watched.session_id]

    async def run(self) -> None:
        """Verify every watched session each interval, until cancelled."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            delay = self.interval if not failures else min(self.interval, _retry_delay(failures))
            await asyncio.sleep(delay * random.uniform(0.8, 1.0))  # noqa: S311 - not crypto
            ids = list(self._watched)
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
                for same in list(self._watched.values()):
                    for watched in list(same):
                        watched.doubt(now, self.verify_for)
                continue
            failures = 0
            now = loop.time()
            for session_id in ids:
                for watched in list(self._watched.get(session_id, ())):
                    watched.verified(deadlines.get(session_id), now)


class _Watcher:
    """What one socket knows of its session, and when it must look again."""

    def __init__(
        self, *, db: Database, session_id: uuid.UUID, watch: SessionWatch | None, verify_for: float
    ) -> None:
        self.db = db
        self.loop = asyncio.get_running_loop()
        self.watched = _Watched(session_id, verified_at=self.loop.time())
        self.watch = watch
        self.verify_for = verify_for
        # Read first thing (after subscribing, so a sign-out in between is not missed).
        self.read_at: float | None = self.loop.time()
        self.failures = 0
        self.known = False

    @property
    def doubted(self) -> bool:
        # With a SessionWatch the session is verified all the time; without one, only while
        # a read is pending.
        return self.read_at is not None or self.watch is not None

    async def read_if_due(self) -> None:
        if self.read_at is None or self.loop.time() < self.read_at:
            return
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                deadline = await store.session_deadline(self.db, session_id=self.watched.session_id)
        except Exception as error:  # noqa: BLE001 - retried with backoff and jitter
            self.failures += 1
            self.read_at = self.loop.time() + _retry_delay(self.failures)
            log.info("cannot read session %s (%s); retrying", self.watched.session_id, error)
            return
        self.watched.verified(deadline, self.loop.time())
        self.failures, self.read_at = 0, None

    def verdict(self) -> str | None:
        """Why the socket must close now, if it must."""
        if self.watched.changed.is_set():
            self.watched.changed.clear()
            self.known = True
        if self.known and self.watched.deadline is None:
            return "revoked"
        if self.doubted and self.loop.time() - self.watched.verified_at >= self.verify_for:
            return UNVERIFIABLE
        deadline = self.watched.deadline
        if self.read_at is None and deadline is not None and deadline <= utcnow():
            return "expired"
        return None

    def wait(self) -> float | None:
        """How long to wait for a signal before looking again (None: as long as it takes)."""
        waits = []
        if self.doubted and self.watch is None:
            # (With a SessionWatch, the watch wakes this watcher when verification lapses.)
            waits.append(self.watched.verified_at + self.verify_for - self.loop.time())
        if self.read_at is not None:
            waits.append(self.read_at - self.loop.time())
        elif self.watched.deadline is not None:
            waits.append((self.watched.deadline - utcnow()).total_seconds())
        return max(0.0, min(waits)) if waits else None

    def heard(self, signal: object) -> str | None:
        """Take a signal of the session's channel; the verdict it gives, if any."""
        if signal is _ENDED:
            return "closed"
        if signal == SESSION_REVOKED:
            return "revoked"
        if signal == SESSION_REFRESHED:
            self.read_at = self.loop.time()
        elif signal is RESYNC:
            # Every socket of the process hears this at once: spread the reads.
            spread = self.loop.time() + random.uniform(0, RESYNC_SPREAD)  # noqa: S311
            self.read_at = spread if self.read_at is None else min(self.read_at, spread)
        return None


async def wait_for_session_end(
    *,
    db: Database,
    pubsub: PubSub,
    session_id: uuid.UUID,
    watch: SessionWatch | None = None,
    verify_for: float = 30.0,
) -> str:
    """Return "revoked", "expired" or "unverifiable" once the session ends or can no longer
    be verified ("closed" when pub/sub went away first). A refresh moves the deadline."""
    watcher = _Watcher(db=db, session_id=session_id, watch=watch, verify_for=verify_for)
    async with pubsub.subscribe(session_channel(session_id)) as signals:
        events = aiter(signals)
        signal: asyncio.Future[Any] | None = None
        changed: asyncio.Future[Any] | None = None
        if watch is not None:
            watch.add(watcher.watched)
        try:
            while True:
                await watcher.read_if_due()
                verdict = watcher.verdict()
                if verdict is not None:
                    return verdict
                signal = signal or asyncio.ensure_future(anext(events, _ENDED))
                changed = changed or asyncio.ensure_future(watcher.watched.changed.wait())
                waiting: set[asyncio.Future[Any]] = {signal, changed}
                done, _ = await asyncio.wait(
                    waiting, timeout=watcher.wait(), return_when=asyncio.FIRST_COMPLETED
                )
                if changed in done:
                    changed = None
                if signal in done:
                    verdict = watcher.heard(signal.result())
                    signal = None
                    if verdict is not None:
                        return verdict
        finally:
            if watch is not None:
                watch.discard(watcher.watched)
            for task in (signal, changed):
                if task is not None:
                    task.cancel()


_ENDED = object()


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
