"""The `chat-backend` command, run for real as a subprocess: serve, migrate, export-schema."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.core.settings import MIN_SECRET_BYTES, Settings
from schema import schema
from tests.support import ME, PASSWORD, ROOT, SIGN_UP, free_port, unique_name

CHAT_BACKEND = Path(sys.executable).parent / "chat-backend"
STARTUP_DEADLINE_SECONDS = 60
COMMAND_TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(
    not CHAT_BACKEND.exists(), reason=f"{CHAT_BACKEND} is not installed (pip install -e .)"
)


def clean_env(**variables: str) -> dict[str, str]:
    """The runner's environment without any setting of the service, plus `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields
        and name not in ("CHAT_BACKEND_RUN_MIGRATIONS", "HOST", "PORT")
    }
    # The code under test, even when the virtualenv's editable install is another checkout's.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(variables)
    return env


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHAT_BACKEND), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize(
    "secret",
    [pytest.param(None, id="unset"), pytest.param("s" * (MIN_SECRET_BYTES - 1), id="too-short")],
)
def test_serve_in_production_without_a_usable_secret_key_exits_naming_secret_key(
    tmp_path: Path, secret: str | None
) -> None:
    variables = {"ENVIRONMENT": "production"}
    if secret is not None:
        variables["SECRET_KEY"] = secret
    result = run("serve", "--port", str(free_port()), cwd=tmp_path, env=clean_env(**variables))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "secret_key").exists()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`chat-backend serve` in a fresh folder with no configuration at all; its URL and cwd."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(CHAT_BACKEND), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while True:
            exit_code = process.poll()
            assert exit_code is None, f"serve exited {exit_code}:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            time.sleep(0.1)  # polling a subprocess's readiness, bounded by the deadline
        yield url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_serve_from_a_fresh_folder_answers_health_sign_up_and_me(
    served: tuple[str, Path],
) -> None:
    url, cwd = served
    with httpx.Client(base_url=url, timeout=30) as browser:
        assert browser.get("/healthz").json() == {"status": "ok"}
        name = unique_name()
        signed_up = browser.post(
            "/graphql", json={"query": SIGN_UP, "variables": {"name": name, "password": PASSWORD}}
        ).json()
        assert not signed_up.get("errors"), signed_up
        me = browser.post("/graphql", json={"query": ME}).json()
    assert me["data"]["me"]["name"] == name
    # Everything it needed went to ./data: the database and a private development secret.
    assert (cwd / "data" / "chat.db").is_file()
    secret_file = cwd / "data" / "secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600


def test_migrate_creates_the_tables_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "fresh.db"
    env = clean_env(DATABASE_URL=f"sqlite+aiosqlite:///{path}")
    result = run("migrate", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    tables = {row[0] for row in rows}
    assert {"users", "user_sessions", "alembic_version"} <= tables
    # Running it again is a no-op, not an error.
    again = run("migrate", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr


def test_export_schema_to_stdout_prints_the_sdl(tmp_path: Path) -> None:
    result = run("export-schema", "-", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == schema.as_str() + "\n"
    assert "type Query" in result.stdout
    assert "signIn(name: String!, password: String!): AuthPayload!" in result.stdout


def test_export_schema_writes_a_file(tmp_path: Path) -> None:
    result = run("export-schema", "out.graphql", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.graphql").read_text() == schema.as_str() + "\n"


def test_serve_with_several_workers_refuses_in_memory_pub_sub(tmp_path: Path) -> None:
    result = run(
        "serve", "--port", str(free_port()), "--workers", "2", cwd=tmp_path, env=clean_env()
    )
    assert result.returncode == 2
    assert "BROADCAST_URL=redis://" in result.stderr
    assert "Traceback" not in result.stderr
