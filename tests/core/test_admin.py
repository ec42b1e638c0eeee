"""The admin commands, run for real as subprocesses against the database of a running server,
which hears of them through Redis (the run's own, or a private redis-server)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.core.settings import Settings
from tests.conftest import make_settings
from tests.support import (
    INBOX,
    PASSWORD,
    ROOT,
    SIGN_IN,
    GraphQLClient,
    GraphQLWebSocket,
    RedisServer,
    RunningServer,
    open_direct_room,
    running_server,
    send,
    unique_name,
)

CHAT_BACKEND = Path(sys.executable).parent / "chat-backend"
SESSIONS = "query { sessions { id current } }"
# The close code of a socket whose session ended (schema.view.SESSION_ENDED_CLOSE_CODE).
SESSION_ENDED = 4401

pytestmark = pytest.mark.skipif(
    not CHAT_BACKEND.exists(), reason=f"{CHAT_BACKEND} is not installed (pip install -e .)"
)


@pytest.fixture(scope="module")
async def redis_url(broadcast_url: str) -> AsyncIterator[str]:
    """The run's Redis, or a private one when the run uses memory://."""
    if broadcast_url.startswith("redis://"):
        yield broadcast_url
        return
    redis = RedisServer()
    await redis.start()
    try:
        yield redis.url
    finally:
        await redis.stop()


@pytest.fixture(scope="module")
async def admin_server(
    database_url: str, redis_url: str, data_dir: Path
) -> AsyncIterator[RunningServer]:
    async with running_server(
        make_settings(database_url, redis_url, data_dir), run_migrations=False
    ) as server:
        yield server


async def chat_backend(*args: str, settings: Settings) -> tuple[int, str, str]:
    """Run `chat-backend ARGS` with the server's database and broadcast URLs (without
    blocking the loop the server runs on)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["DATABASE_URL"] = settings.effective_database_url
    env["BROADCAST_URL"] = settings.broadcast_url
    process = await asyncio.create_subprocess_exec(
        str(CHAT_BACKEND),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def closes_within(socket: GraphQLWebSocket, seconds: float) -> int | None:
    closed = await asyncio.wait_for(asyncio.shield(socket.closed), seconds)
    return closed.code


async def test_user_disable_closes_sockets_within_a_second_refuses_sign_in_and_enable_undoes_it(
    admin_server: RunningServer,
) -> None:
    name = unique_name("dis")
    phone, laptop = GraphQLClient(admin_server.url), GraphQLClient(admin_server.url)
    try:
        await phone.sign_up(name)
        await laptop.sign_in(name)
        async with (
            GraphQLWebSocket.connect(admin_server.ws_url, cookie=phone.session_cookie) as first,
            GraphQLWebSocket.connect(admin_server.ws_url, cookie=laptop.session_cookie) as second,
        ):
            for socket in (first, second):
                subscription = await socket.subscribe(INBOX)
                assert not socket.closed.done(), subscription

            code, out, err = await chat_backend(
                "user", "disable", name, settings=admin_server.settings
            )
            done = time.monotonic()
            assert code == 0, err
            assert "revoked 2 session(s)" in out
            assert await closes_within(first, 1.0) == SESSION_ENDED
            assert await closes_within(second, max(0.05, 1.0 - (time.monotonic() - done)))

        # Its sessions are revoked: any request with them is UNAUTHENTICATED.
        error = await phone.error(SESSIONS)
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        # Signing in again is refused, with a clear error (after the password was checked).
        error = await laptop.error(SIGN_IN, {"name": name, "password": PASSWORD})
        assert error["extensions"]["code"] == "FORBIDDEN"
        assert "account disabled" in error["message"]
        wrong = await laptop.error(SIGN_IN, {"name": name, "password": PASSWORD + "!"})
        assert wrong["extensions"]["code"] == "UNAUTHENTICATED"

        code, out, err = await chat_backend("user", "enable", name, settings=admin_server.settings)
        assert code == 0, err
        assert f"enabled {name}" in out
        await phone.sign_in(name)
        assert len((await phone.data(SESSIONS))["sessions"]) == 1
    finally:
        await phone.aclose()
        await laptop.aclose()


async def test_admin_commands_on_an_unknown_user_fail_with_a_message(
    admin_server: RunningServer,
) -> None:
    for args in (
        ["user", "disable", "nobody_here"],
        ["sessions", "revoke", "--user", "nobody_here"],
    ):
        code, _, err = await chat_backend(*args, settings=admin_server.settings)
        assert code == 1
        assert "no user named 'nobody_here'" in err
        assert "Traceback" not in err


async def test_sessions_revoke_all_but_newest_ends_the_older_devices_and_their_sockets(
    admin_server: RunningServer,
) -> None:
    name = unique_name("rev")
    devices = [GraphQLClient(admin_server.url) for _ in range(3)]
    try:
        await devices[0].sign_up(name)
        for device in devices[1:]:
            await device.sign_in(name)
        async with (
            GraphQLWebSocket.connect(admin_server.ws_url, cookie=devices[0].session_cookie) as old,
            GraphQLWebSocket.connect(admin_server.ws_url, cookie=devices[2].session_cookie) as new,
        ):
            await old.subscribe(INBOX)
            await new.subscribe(INBOX)
            code, out, err = await chat_backend(
                "sessions",
                "revoke",
                "--user",
                name,
                "--all-but-newest",
                settings=admin_server.settings,
            )
            assert code == 0, err
            assert f"revoked 2 session(s) of {name}" in out
            assert await closes_within(old, 1.0) == SESSION_ENDED
            await asyncio.sleep(0.2)
            assert not new.closed.done()

        for stolen in devices[:2]:
            error = await stolen.error(SESSIONS)
            assert error["extensions"]["code"] == "UNAUTHENTICATED"
        sessions = (await devices[2].data(SESSIONS))["sessions"]
        assert [session["current"] for session in sessions] == [True]

        code, out, err = await chat_backend(
            "sessions", "revoke", "--user", name, settings=admin_server.settings
        )
        assert code == 0, err
        assert f"revoked 1 session(s) of {name}" in out
        error = await devices[2].error(SESSIONS)
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        for device in devices:
            await device.aclose()


async def test_stats_counts_users_rooms_messages_and_recent_sessions(
    admin_server: RunningServer,
) -> None:
    code, out, err = await chat_backend("stats", "--json", settings=admin_server.settings)
    assert code == 0, err
    before = json.loads(out)
    alice, bob = GraphQLClient(admin_server.url), GraphQLClient(admin_server.url)
    try:
        await alice.sign_up()
        assert bob.user is None
        await bob.sign_up()
        assert bob.user is not None
        room = await open_direct_room(alice, bob.user["name"])
        await send(alice, room, "one")
        await send(bob, room, "two")
        await bob.data("mutation { signOut }")

        code, out, err = await chat_backend("stats", "--json", settings=admin_server.settings)
        assert code == 0, err
        after = json.loads(out)
        assert after["users"] - before["users"] == 2
        assert after["rooms"] - before["rooms"] == 1
        assert after["messages"] - before["messages"] == 2
        # Bob signed out: no longer live, but active in the last 24 hours.
        assert after["sessions_live"] - before["sessions_live"] == 1
        assert after["sessions_active_24h"] - before["sessions_active_24h"] == 2

        code, out, err = await chat_backend("stats", settings=admin_server.settings)
        assert code == 0, err
        assert f"users: {after['users']}" in out.splitlines()
    finally:
        await alice.aclose()
        await bob.aclose()
