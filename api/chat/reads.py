"""Read positions and unread counts.

A read position only moves forward. Clients mark read as they scroll, often several times a
second: the position is taken at once (the answer, this instance's reads and the ReadPosition
signal have it), and written at most once per second per user and room, the latest winning.
What is still unwritten at shutdown is written before the database goes away.

Unread counts come from the (room, seq) index, counting at most 1,000 rows per room: no
counter per member per message (that would cost a write per member for every message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import replace

from api.chat import service as chat
from api.chat import store
from api.chat.signals import Signals
from api.chat.views import RoomView, decode_message_cursor
from api.core.db import Database
from api.core.errors import BadUserInput, Forbidden, NotFound
from api.users.cache import UserDirectory
from api.users.views import UserView

log = logging.getLogger(__name__)

# At most one write per user and room in this many seconds.
WRITE_INTERVAL = 1.0
# Unread counts stop at this many.
UNREAD_CAP = 1000


class ReadPositions:
    """Read positions not yet written, and the writes that coalesce them (one per process,
    built by the app's lifespan; `flush` at shutdown)."""

    def __init__(self, db: Database, *, interval: float = WRITE_INTERVAL) -> None:
        self.db = db
        self.interval = interval
        self._pending: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        self._written_at: dict[tuple[uuid.UUID, uuid.UUID], float] = {}
        self._timers: dict[tuple[uuid.UUID, uuid.UUID], asyncio.TimerHandle] = {}
        self._writing: set[asyncio.Task[None]] = set()
        self.writes = 0

    def pending(self, room_id: uuid.UUID, user_id: uuid.UUID) -> int | None:
        """The user's position in the room if it is newer than what is written."""
        return self._pending.get((room_id, user_id))

    def effective(self, room_id: uuid.UUID, user_id: uuid.UUID, stored: int) -> int:
        return max(stored, self._pending.get((room_id, user_id), 0))

    async def record(self, room_id: uuid.UUID, user_id: uuid.UUID, seq: int) -> None:
        """Take a new position: written now, unless one was written less than `interval` ago;
        then once that interval is over (the latest position by then)."""
        key = (room_id, user_id)
        if seq <= self._pending.get(key, 0):
            return
        self._pending[key] = seq
        if key in self._timers:
            return
        wait = self._written_at.get(key, -self.interval) + self.interval - time.monotonic()
        if wait <= 0:
            await self._write(key)
            return
        self._timers[key] = asyncio.get_running_loop().call_later(wait, self._write_later, key)

    def _write_later(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        self._timers.pop(key, None)
        task = asyncio.create_task(self._write(key))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        seq = self._pending.get(key)
        if seq is None:
            return
        self._written_at[key] = time.monotonic()
        try:
            await store.save_read_position(self.db, room_id=key[0], user_id=key[1], seq=seq)
        except Exception as error:  # noqa: BLE001 - kept, and tried again a second later
            log.warning("could not save a read position: %s", error)
            if key not in self._timers:
                self._timers[key] = asyncio.get_running_loop().call_later(
                    self.interval, self._write_later, key
                )
            return
        self.writes += 1
        if self._pending.get(key) == seq:
            del self._pending[key]
        # Forget old write times, so the map stays as small as the set of active readers.
        if len(self._written_at) > 10_000:
            horizon = time.monotonic() - self.interval
            self._written_at = {k: t for k, t in self._written_at.items() if t > horizon}

    async def flush(self) -> None:
        """Write everything still pending (at shutdown)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._writing:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._writing, return_exceptions=True)
        for key in list(self._pending):
            await self._write(key)


async def mark_read(
    *,
    db: Database,
    reads: ReadPositions,
    signals: Signals | None,
    user: UserView,
    room_id: uuid.UUID,
    cursor: str,
    directory: UserDirectory | None = None,
) -> RoomView:
    """Move the user's read position in a room forward to a cursor's position (never back);
    the room as the user now sees it."""
    seq = decode_message_cursor(cursor, room_id=room_id)
    row = await store.room(db, room_id=room_id)
    if row is None:
        raise NotFound("No such room.")
    me = next((m for m in row.members if m.user_id == user.id), None)
    if me is None:
        raise Forbidden()
    if seq > row.last_seq:
        raise BadUserInput("That cursor is past the room's last entry.")
    if seq > reads.effective(room_id, user.id, me.read_seq):
        await reads.record(room_id, user.id, seq)
        if signals is not None:
            await signals.read_moved(room_id=room_id, user=user, seq=seq)
        # The row read above, with the position just taken (written or not yet).
        members = [replace(m, read_seq=seq) if m is me else m for m in row.members]
        row = replace(row, members=members)
    (view,) = await chat.room_views(db, directory, [row])
    return view


async def unread_counts(
    *, db: Database, user_id: uuid.UUID, read_seqs: dict[uuid.UUID, int]
) -> dict[uuid.UUID, int]:
    """Per room: messages by others after the read seq, not deleted, up to UNREAD_CAP; all the
    rooms in one statement."""
    return await store.unread_counts(db, user_id=user_id, read_seqs=read_seqs, cap=UNREAD_CAP)
