"""Logs: JSON lines with correlation ids, the access log, no secrets, a quiet start."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.core.logs import JsonFormatter, correlation_id
from api.core.settings import Settings
from api.users import service as users_service
from tests.conftest import make_settings
from tests.support import (
    INBOX,
    ROOT,
    SIGN_IN,
    SIGN_UP,
    GraphQLClient,
    GraphQLWebSocket,
    ServerProcess,
    open_direct_room,
    running_server,
    send,
    unique_name,
)

SESSIONS = "query Devices { sessions { id } }"
SECRET = "known-secret-" + secrets.token_hex(24)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged while the test runs, as the JSON format writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in lines(stream) if line["logger"] == "chat.access"]


def test_a_json_line_has_time_level_logger_message_the_correlation_id_and_the_exception() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    token = correlation_id.set("abc")
    try:
        text = formatter.format(record)
    finally:
        correlation_id.reset(token)
    entry = json.loads(text)
    assert "\n" not in text
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "x"
    assert entry["message"] == "failed here"
    assert entry["correlationId"] == "abc"
    assert entry["time"].endswith("+00:00")
    assert "ValueError: broken" in entry["exception"]


def test_text_is_the_default_log_format() -> None:
    assert Settings(_env_file=None).log_format == "text"


async def test_no_secret_cookie_password_name_or_message_reaches_the_log_and_each_operation_has_an_access_line(  # noqa: E501
    json_log: io.StringIO,
    database_url: str,
    broadcast_url: str,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(
        database_url, broadcast_url, data_dir, secret_key=SECRET, log_format="json"
    )
    name, password = unique_name("logged"), "pw-" + secrets.token_hex(12)
    wrong_password = "wrong-" + secrets.token_hex(12)
    data = "message-" + secrets.token_hex(12)
    async with running_server(settings, run_migrations=False) as server:
        client, other = GraphQLClient(server.url), GraphQLClient(server.url)
        try:
            signed_up = await client.data(SIGN_UP, {"name": name, "password": password})
            user_id = signed_up["signUp"]["user"]["id"]
            await client.data(SIGN_IN, {"name": name, "password": password})
            failed = await other.error(SIGN_IN, {"name": name, "password": wrong_password})
            assert failed["extensions"]["code"] == "UNAUTHENTICATED"
            cookie = client.session_cookie
            bob = await other.sign_up()
            room = await open_direct_room(client, bob["name"])
            async with GraphQLWebSocket.connect(server.ws_url, cookie=cookie) as socket:
                inbox = await socket.subscribe(INBOX)
                await send(client, room, data)
                assert (await inbox.data())["inbox"]["data"] == data
                await inbox.stop()

                async def broken(**_: Any) -> Any:
                    raise RuntimeError("a bug")

                monkeypatch.setattr(users_service, "list_active_sessions", broken)
                internal = await client.error(SESSIONS)
            assert internal["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        finally:
            await client.aclose()
            await other.aclose()

    text = json_log.getvalue()
    for secret in (SECRET, cookie, password, wrong_password, name, data):
        assert secret not in text, secret
    every = lines(json_log)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in every)
    [started] = [line for line in every if line["message"].startswith("effective settings")]
    assert started["settings"]["SECRET_KEY"] == "***"
    assert started["settings"]["LOG_FORMAT"] == "json"

    access = access_lines(json_log)
    by_name: dict[tuple[str, str], dict[str, Any]] = {}
    for line in access:  # the first of each
        by_name.setdefault((line["transport"], line["operationName"]), line)
    sign_up = by_name["http", "SignUp"]
    assert (sign_up["operationType"], sign_up["outcome"]) == ("mutation", "OK")
    assert sign_up["userId"] == user_id
    assert sign_up["status"] == 200
    assert sign_up["durationMs"] >= 0
    sign_ins = [line for line in access if line["operationName"] == "SignIn"]
    assert [line["outcome"] for line in sign_ins] == ["OK", "UNAUTHENTICATED"]
    assert sign_ins[1]["userId"] is None
    follow = by_name["ws", "anonymous"]
    assert (follow["operationType"], follow["outcome"], follow["end"]) == (
        "subscription",
        "OK",
        "stopped",
    )
    assert follow["userId"] == user_id
    assert all(line["correlationId"] for line in access)
    assert len({line["correlationId"] for line in access}) == len(access)

    # The internal error: the client's correlation id leads to the access line and the cause.
    failure = by_name["http", "Devices"]
    assert failure["outcome"] == "INTERNAL_SERVER_ERROR"
    assert failure["correlationId"] == internal["extensions"]["correlationId"]
    [cause] = [line for line in every if "exception" in line and "a bug" in line["exception"]]
    assert cause["correlationId"] == failure["correlationId"]


async def test_serve_with_json_logs_prints_only_json_lines_and_no_alembic_plugin_chatter(
    tmp_path: Path,
) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
    }
    env |= {
        "PYTHONPATH": str(ROOT),
        "LOG_FORMAT": "json",
        "SECRET_KEY": SECRET,
        # A fresh embedded database: serve migrates it at start.
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
    }
    server = ServerProcess(env)
    await server.start()
    client = GraphQLClient(server.url)
    try:
        await client.sign_up()
    finally:
        await client.aclose()
        await server.stop()
    output = [line for line in server.output if line.strip()]
    entries = [json.loads(line) for line in output]
    assert not [entry for entry in entries if "setup plugin" in entry["message"]]
    assert any("Running upgrade" in entry["message"] for entry in entries)
    assert SECRET not in "".join(output)
    [access] = [entry for entry in entries if entry["logger"] == "chat.access"]
    assert (access["operationName"], access["outcome"]) == ("SignUp", "OK")
    # uvicorn's own access line (`POST /graphql 200`) is replaced by this one.
    assert not [entry for entry in entries if entry["logger"] == "uvicorn.access"]


def test_correlation_ids_of_requests_are_distinct_and_32_hex_digits() -> None:
    from api.core.logs import CorrelationIds

    one, other = CorrelationIds(), CorrelationIds()
    ids = [one() for _ in range(1000)] + [other() for _ in range(1000)]
    assert len(set(ids)) == len(ids)  # across processes too: each has its own random half
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)
