"""The sessions of a running process's sockets: one registry per process closes each socket
when its session is revoked, expires or can no longer be verified; and the purge of ended
sessions. (The users service issues, refreshes and revokes sessions.)"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from api.core.db import Database, utcnow
from api.core.pubsub import RESYNC, PubSub, Subscription
from api.users import store
from api.users.constants import (
    SESSION_REFRESHED,
    SESSION_REVOKED,
    SESSIONS_CHANNEL,
    session_channel,
)

log = logging.getLogger(__name__)

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
