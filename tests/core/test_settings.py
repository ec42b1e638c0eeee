"""Settings: the secret (required in production, generated in development), cookie defaults."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from api.core.settings import MIN_SECRET_BYTES, ConfigurationError, Settings
from tests.conftest import make_settings
from tests.support import ME, GraphQLClient, running_server


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only what a test passes counts: no variable of the runner's environment leaks in."""
    for variable in list(os.environ):
        if variable.lower() in Settings.model_fields:
            monkeypatch.delenv(variable)
    yield


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_production_without_secret_key_refuses_to_create_the_app(tmp_path: Path) -> None:
    production = settings(environment="production", secret_key="", data_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        create_app(production)
    # Nothing was generated to paper over the missing secret.
    assert not (tmp_path / "secret_key").exists()


def test_production_reads_secret_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        settings().check()
    monkeypatch.setenv("SECRET_KEY", "s" * MIN_SECRET_BYTES)
    assert settings().secret == b"s" * MIN_SECRET_BYTES


@pytest.mark.parametrize("environment", ["development", "production"])
def test_too_short_secret_key_is_refused(environment: str, tmp_path: Path) -> None:
    short = settings(
        environment=environment, secret_key="s" * (MIN_SECRET_BYTES - 1), data_dir=tmp_path
    )
    with pytest.raises(ConfigurationError, match="SECRET_KEY") as raised:
        create_app(short)
    assert str(MIN_SECRET_BYTES) in str(raised.value)


def test_secret_key_of_the_minimum_length_is_accepted(tmp_path: Path) -> None:
    secret = "s" * MIN_SECRET_BYTES
    production = settings(environment="production", secret_key=secret, data_dir=tmp_path)
    create_app(production)
    assert production.secret == secret.encode()
    assert MIN_SECRET_BYTES >= 32


def test_development_without_secret_key_generates_one_in_the_data_folder(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh" / "data"
    secret = settings(data_dir=data_dir).secret
    path = data_dir / "secret_key"
    assert path.read_bytes().strip() == secret
    assert len(secret) >= MIN_SECRET_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A second start reads the same secret instead of making a new one.
    assert settings(data_dir=data_dir).secret == secret
    # Another data folder gets its own.
    assert settings(data_dir=tmp_path / "other").secret != secret


async def test_generated_development_secret_keeps_sessions_across_a_restart(
    database_url: str, broadcast_url: str, tmp_path: Path
) -> None:
    def development() -> Settings:
        return make_settings(database_url, broadcast_url, tmp_path, secret_key="")

    async with running_server(development(), run_migrations=False) as first:
        browser = GraphQLClient(first.url)
        try:
            user = await browser.sign_up()
            cookie = browser.session_cookie
        finally:
            await browser.aclose()
    assert (tmp_path / "secret_key").exists()
    async with running_server(development(), run_migrations=False) as second:
        browser = GraphQLClient(second.url)
        try:
            me = (await browser.data(ME, headers={"Cookie": f"session={cookie}"}))["me"]
        finally:
            await browser.aclose()
    assert me == {"id": user["id"], "name": user["name"]}


@pytest.mark.parametrize("content", [b"", b"\n", b"short"], ids=["empty", "newline", "short"])
def test_a_too_short_development_secret_file_is_never_used(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "secret_key").write_bytes(content)
    try:
        secret = settings(data_dir=tmp_path).secret
    except ConfigurationError:
        return
    assert len(secret) >= MIN_SECRET_BYTES


def test_cookies_are_secure_by_default_in_production_only() -> None:
    secret = "s" * MIN_SECRET_BYTES
    production = settings(environment="production", secret_key=secret)
    development = settings(secret_key=secret)
    assert production.effective_cookie_secure
    assert production.cookie_name == "__Host-session"
    assert not development.effective_cookie_secure
    assert development.cookie_name == "session"
    assert settings(secret_key=secret, cookie_secure=True).cookie_name == "__Host-session"
    insecure = settings(environment="production", secret_key=secret, cookie_secure=False)
    assert insecure.cookie_name == "session"
