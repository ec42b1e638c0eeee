"""Bulk-loading history straight into the app's tables, and the SQL of a history page.

A stored message is two rows: `messages`, and its 'posted' entry in the room's log
(`room_events`, same seq, message_id = messages.id), which subscriptions replay from.
PostgreSQL: COPY (asyncpg copy_records_to_table) of the messages in chunks of 500,000 rows, then
their log entries with INSERT ... SELECT from the new messages in chunks of the same size; from
500,000 rows on, each table's indexes are dropped first and rebuilt after; then rooms.last_seq
and VACUUM ANALYZE. `bulk_load_messages` is the one place that knows the app's message tables.
The yoga peer's schema has its own loader (`bulk_load_yoga_messages`).
SQLite: executemany in large transactions, each also inserting its log entries from its
messages; ids, timestamps and uuids are stored in the formats of a row the app itself wrote
(the room's first message, sent through the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.loadgen import summarize_ms
from bench.stack import Stack

BATCH = 100_000


def _data(seq: int, size: int) -> str:
    text = f"history message {seq} "
    return text + "x" * max(0, size - len(text))


async def seed_messages(
    stack: Stack,
    *,
    room_id: str,
    sender_ids: list[str],
    first_seq: int,
    count: int,
    message_bytes: int = 100,
    log: Any = None,
) -> None:
    """Bulk-load `count` messages (seq first_seq, first_seq + 1, ...) into the app's tables."""
    if stack.is_sqlite:
        await asyncio.to_thread(
            _seed_sqlite, str(stack.sqlite_path), room_id, first_seq, count, message_bytes
        )
        return
    await bulk_load_messages(
        stack.asyncpg_dsn,
        room_id=room_id,
        sender_ids=sender_ids,
        first_seq=first_seq,
        count=count,
        message_bytes=message_bytes,
        log=log,
    )


async def bulk_load_messages(
    dsn: str,
    *,
    room_id: str,
    sender_ids: list[str],
    first_seq: int,
    count: int,
    message_bytes: int = 100,
    log: Any = None,
) -> None:
    """The app's PostgreSQL schema: rows for `messages`, their 'posted' entries in
    `room_events`, then `rooms.last_seq`.

    Everything that knows the app's message tables is in this function: adapt it when the
    schema changes. The rest is generic: COPY (or INSERT ... SELECT) in chunks, with the table's
    indexes and unique/primary constraints dropped first and rebuilt after for big loads, and
    foreign-key triggers skipped (the room and the senders exist).
    """
    import asyncpg

    room = uuid.UUID(room_id)
    senders = [uuid.UUID(value) for value in sender_ids]
    base = datetime.now(UTC)
    last_seq = first_seq + count - 1
    columns = ["room_id", "seq", "sender_id", "type", "data", "client_message_id", "created_at"]

    def rows(start: int, stop: int) -> Any:
        for seq in range(start, stop):
            yield (
                room,
                seq,
                senders[seq % 2],
                "text",
                _data(seq, message_bytes),
                None,
                base + timedelta(microseconds=seq),
            )

    conn = await asyncpg.connect(dsn)
    try:
        await copy_in_chunks(conn, "messages", columns, rows, first_seq, last_seq, log=log)

        # Each message's MessagePosted entry: the seq, sender, time and id the message got.
        entries = 0

        async def posted(start: int, stop: int) -> None:
            nonlocal entries
            status = await conn.execute(
                "INSERT INTO room_events (room_id, seq, kind, actor_id, created_at, message_id) "
                "SELECT room_id, seq, 'posted', sender_id, created_at, id FROM messages "
                "WHERE room_id = $1 AND seq >= $2 AND seq < $3",
                room,
                start,
                stop,
            )
            entries += int(status.split()[-1])  # "INSERT 0 <rows>"

        await fill_in_chunks(conn, "room_events", posted, first_seq, last_seq, log=log)
        if entries != count:
            raise RuntimeError(f"{entries} log entries written for {count} messages")
        await conn.execute(
            "UPDATE rooms SET last_seq = $1, last_activity_at = $2 WHERE id = $3",
            last_seq,
            base + timedelta(microseconds=last_seq),
            room,
        )
        # Each member's copy of the room's last activity (the room list's order).
        await conn.execute(
            "UPDATE room_members SET last_activity_at = $1 WHERE room_id = $2",
            base + timedelta(microseconds=last_seq),
            room,
        )
        await conn.execute("ANALYZE rooms")
        await conn.execute("ANALYZE room_members")
        await conn.execute("ANALYZE users")
    finally:
        await conn.close()


async def bulk_load_yoga_messages(
    dsn: str,
    *,
    room_id: str,
    sender_ids: list[str],
    first_seq: int,
    count: int,
    message_bytes: int = 100,
    log: Any = None,
) -> None:
    """The yoga peer's schema (its server.mjs): `messages`, then `rooms.last_seq`."""
    import asyncpg

    room = uuid.UUID(room_id)
    senders = [uuid.UUID(value) for value in sender_ids]
    base = datetime.now(UTC)
    last_seq = first_seq + count - 1
    columns = ["room_id", "seq", "sender_id", "type", "data", "client_message_id", "created_at"]

    def rows(start: int, stop: int) -> Any:
        for seq in range(start, stop):
            yield (
                room,
                seq,
                senders[seq % 2],
                "text",
                _data(seq, message_bytes),
                None,
                base + timedelta(microseconds=seq),
            )

    conn = await asyncpg.connect(dsn)
    try:
        await copy_in_chunks(conn, "messages", columns, rows, first_seq, last_seq, log=log)
        await conn.execute(
            "UPDATE rooms SET last_seq = $1, last_message_at = $2 WHERE id = $3",
            last_seq,
            base + timedelta(microseconds=last_seq),
            room,
        )
        await conn.execute("ANALYZE rooms")
    finally:
        await conn.close()


REBUILD_FROM = 500_000  # rows: from here on, drop indexes first and rebuild them after


async def copy_in_chunks(
    conn: Any,
    table: str,
    columns: list[str],
    rows: Any,
    first: int,
    last: int,
    *,
    chunk: int = 500_000,
    log: Any = None,
) -> None:
    """COPY rows(start, stop) for first..last in chunks, then VACUUM ANALYZE the table (see
    fill_in_chunks)."""

    async def copy(start: int, stop: int) -> None:
        await conn.copy_records_to_table(table, records=rows(start, stop), columns=columns)

    await fill_in_chunks(conn, table, copy, first, last, chunk=chunk, log=log)


async def fill_in_chunks(
    conn: Any,
    table: str,
    fill: Callable[[int, int], Awaitable[None]],
    first: int,
    last: int,
    *,
    chunk: int = 500_000,
    log: Any = None,
) -> None:
    """Run fill(start, stop) for first..last in chunks, then VACUUM ANALYZE the table.

    For big loads the table's indexes and primary/unique constraints (those no foreign key
    depends on) are dropped first and rebuilt after: one sort per index instead of millions of
    inserts. Foreign-key triggers are skipped (session_replication_role = replica) when the role
    may do so.
    """
    count = last - first + 1
    rebuild: list[str] = []
    if count >= REBUILD_FROM:
        rebuild = await _drop_indexes(conn, table)
    # Not a superuser: foreign keys are checked, which is slower.
    with contextlib.suppress(Exception):
        await conn.execute("SET session_replication_role = replica")
    started = time.perf_counter()
    done = 0
    try:
        for start in range(first, last + 1, chunk):
            stop = min(last + 1, start + chunk)
            await fill(start, stop)
            done += stop - start
            if log and count >= 2 * chunk:
                seconds = time.perf_counter() - started
                log(f"      {table}: {done:,}/{count:,} rows ({seconds:.0f} s)")
    finally:
        await conn.execute("RESET session_replication_role")
        if rebuild:
            t0 = time.perf_counter()
            await conn.execute("SET maintenance_work_mem = '512MB'")
            for statement in rebuild:
                await conn.execute(statement)
            await conn.execute("RESET maintenance_work_mem")
            if log:
                log(
                    f"      {table}: {len(rebuild)} indexes rebuilt in "
                    f"{time.perf_counter() - t0:.0f} s"
                )
    t0 = time.perf_counter()
    await conn.execute(f'VACUUM ANALYZE "{table}"')
    if log and count >= 2 * chunk:
        log(f"      VACUUM ANALYZE {table} {time.perf_counter() - t0:.0f} s")


async def _drop_indexes(conn: Any, table: str) -> list[str]:
    """Drop the table's indexes (and the constraints they back) that nothing else depends on;
    returns the statements that recreate them."""
    constraints = await conn.fetch(
        """
        SELECT c.conname, pg_get_constraintdef(c.oid) AS definition, c.conindid
        FROM pg_constraint c
        WHERE c.conrelid = $1::regclass AND c.contype IN ('p', 'u')
          AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f'
                          AND f.conindid = c.conindid)
        """,
        table,
    )
    backing = {row["conindid"] for row in constraints}
    plain = await conn.fetch(
        """
        SELECT i.indexrelid, c.relname, pg_get_indexdef(i.indexrelid) AS definition
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = $1::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
        """,
        table,
    )
    recreate = [
        f'ALTER TABLE "{table}" ADD CONSTRAINT "{row["conname"]}" {row["definition"]}'
        for row in constraints
    ] + [row["definition"] for row in plain if row["indexrelid"] not in backing]
    async with conn.transaction():
        for row in plain:
            await conn.execute(f'DROP INDEX "{row["relname"]}"')
        for row in constraints:
            await conn.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{row["conname"]}"')
    return recreate


def _seed_sqlite(path: str, room_id: str, first_seq: int, count: int, size: int) -> None:
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        # Copy the stored formats (uuid as hex, timestamps as text) from the app's own row.
        row = con.execute(
            "SELECT room_id, sender_id, created_at FROM messages WHERE seq = 1 AND room_id IN "
            "(SELECT id FROM rooms WHERE last_seq = 1) ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise RuntimeError("the room's first message (sent through the API) is missing")
        room_raw, sender_raw, created_raw = row
        if str(room_raw).replace("-", "") != uuid.UUID(room_id).hex:
            raise RuntimeError(f"unexpected room id format {room_raw!r}")
        (other_raw,) = con.execute(
            "SELECT user_id FROM room_members WHERE room_id = ? AND user_id != ?",
            (room_raw, sender_raw),
        ).fetchone()
        senders = [sender_raw, other_raw]
        last_seq = first_seq + count - 1
        insert = (
            "INSERT INTO messages (room_id, seq, sender_id, type, data, client_message_id, "
            "created_at) VALUES (?, ?, ?, 'text', ?, NULL, ?)"
        )
        for start in range(first_seq, last_seq + 1, BATCH):
            stop = min(last_seq + 1, start + BATCH)
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                insert,
                (
                    (room_raw, seq, senders[seq % 2], _data(seq, size), created_raw)
                    for seq in range(start, stop)
                ),
            )
            # Their MessagePosted log entries, in the stored formats of the messages.
            con.execute(
                "INSERT INTO room_events (room_id, seq, kind, actor_id, created_at, message_id) "
                "SELECT room_id, seq, 'posted', sender_id, created_at, id FROM messages "
                "WHERE room_id = ? AND seq >= ? AND seq < ?",
                (room_raw, start, stop),
            )
            con.execute("COMMIT")
        con.execute(
            "UPDATE rooms SET last_seq = ?, last_activity_at = ? WHERE id = ?",
            (last_seq, created_raw, room_raw),
        )
        con.execute(
            "UPDATE room_members SET last_activity_at = ? WHERE room_id = ?",
            (created_raw, room_raw),
        )
        con.execute("ANALYZE")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def history_sql(dialect: str, room_id: str, before_seq: int | None) -> str:
    """The SQLite history page query (the app's Core query), literal."""
    from sqlalchemy import select
    from sqlalchemy.dialects import sqlite

    from api.chat.store import MESSAGES

    query: Any = select(MESSAGES).where(MESSAGES.c.room_id == uuid.UUID(room_id))
    if before_seq is not None:
        query = query.where(MESSAGES.c.seq < before_seq)
    query = query.order_by(MESSAGES.c.seq.desc()).limit(50)
    compiled = query.compile(
        dialect=sqlite.dialect(),
        compile_kwargs={"literal_binds": True},
    )
    return str(compiled)


async def explain_history(
    stack: Stack, *, room_id: str, before_seqs: dict[str, int | None], repeat: int = 200
) -> dict[str, Any]:
    """EXPLAIN (ANALYZE) of each page's SQL, and its latency alone (no HTTP, no ORM)."""
    out: dict[str, Any] = {}
    if stack.is_sqlite:
        return await asyncio.to_thread(
            _explain_sqlite, str(stack.sqlite_path), room_id, before_seqs, repeat
        )
    import asyncpg

    from api.chat.store import _PAGE_BACKWARD, NO_SEQ_LIMIT

    conn = await asyncpg.connect(stack.asyncpg_dsn)
    try:
        # The app's own prepared statement (api.chat.store): membership, position and page.
        room = uuid.UUID(room_id)
        member = await conn.fetchval(
            "SELECT user_id FROM room_members WHERE room_id = $1 LIMIT 1", room
        )
        for name, before in before_seqs.items():
            sql = _PAGE_BACKWARD
            args = (room, member, 0, before if before is not None else NO_SEQ_LIMIT, 50)
            plan_rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            plan = [row[0] for row in plan_rows]
            statement = await conn.prepare(sql)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                rows = await statement.fetch(*args)
                times.append(time.perf_counter() - t0)
            assert len(rows) == 50
            out[name] = {
                "sql": sql,
                "plan": plan,
                "index_used": any("uq_messages_room_seq" in line for line in plan),
                "alone_ms": summarize_ms(times),
            }
    finally:
        await conn.close()
    return out


def _explain_sqlite(
    path: str, room_id: str, before_seqs: dict[str, int | None], repeat: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    con = sqlite3.connect(path, timeout=60)
    try:
        for name, before in before_seqs.items():
            sql = history_sql("sqlite", room_id, before)
            plan = [" | ".join(map(str, row)) for row in con.execute("EXPLAIN QUERY PLAN " + sql)]
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                rows = con.execute(sql).fetchall()
                times.append(time.perf_counter() - t0)
            assert len(rows) == 50, len(rows)
            out[name] = {
                "sql": sql,
                "plan": plan,
                # "SEARCH messages USING INDEX ..." (a full scan reads "SCAN messages").
                "index_used": any(
                    line.split(" | ")[-1].startswith("SEARCH messages USING") for line in plan
                ),
                "alone_ms": summarize_ms(times),
            }
    finally:
        con.close()
    return out
