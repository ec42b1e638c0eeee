"""Configuration from environment variables (and an optional .env file)."""

from __future__ import annotations

import logging
import os
import re
import secrets
from datetime import timedelta
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_rates(text: str) -> list[tuple[int, float]]:
    """Parse "30/10s,300/5m" into [(30, 10.0), (300, 300.0)]; "0" or "" means no limit."""
    text = text.strip()
    if text in ("", "0"):
        return []
    rates = []
    for part in text.split(","):
        match = _RATE.match(part)
        if not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
            raise ValueError(
                f"rate {part!r} must look like 30/10s (count per seconds), or 0 for off"
            )
        count, period, unit = match.groups()
        rates.append((int(count), float(period) * _UNIT_SECONDS[unit or "s"]))
    return rates


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class ConfigurationError(RuntimeError):
    """The configuration cannot run; the message says what to set."""


class Settings(BaseSettings):
    """Every knob of the service; each one is documented in the README's table."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path("data")
    database_url: str = ""
    broadcast_url: str = "memory://"
    secret_key: str = ""
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cookie_secure: bool | None = None
    pbkdf2_iterations: int = Field(default=600_000, ge=1)
    session_ttl: timedelta = timedelta(days=3)
    graphiql: bool | None = None
    # The chat web client (web/) at `/`: on in development, off in production unless set.
    web_client: bool | None = None
    message_max_length: int = Field(default=4000, ge=1)
    max_room_members: int = Field(default=1000, ge=2)
    presence_timeout: float = Field(default=20.0, gt=0, le=30)
    database_pool_size: int = Field(default=10, ge=1)
    subscriber_queue_size: int = Field(default=256, ge=1)
    # How long a session read from the database authenticates requests without another read.
    # Sign-out and refresh reach every instance's cache at once through pub/sub; this bounds
    # how long a lost notice could matter.
    session_cache_ttl: float = Field(default=5.0, ge=0, le=5)
    # A socket whose session cannot be verified this long (database unreachable) is closed.
    session_verify_timeout: float = Field(default=30.0, gt=0)
    # How often revoked and expired sessions are deleted (and their sockets closed).
    session_purge_interval: float = Field(default=3600.0, gt=0)

    # Abuse limits; 0 turns a limit off. Rates read "N/<seconds>s", several separated by ",".
    rate_limit_messages: str = "30/10s,300/300s"
    rate_limit_sign_in: str = "5/60s"
    rate_limit_sign_in_per_address: str = "50/60s"
    rate_limit_sign_up_per_address: str = "200/60s,1000/3600s"
    max_query_depth: int = Field(default=12, ge=0)
    max_query_tokens: int = Field(default=2000, ge=0)
    max_aliases: int = Field(default=30, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=0)
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=0)
    max_subscriptions_per_connection: int = Field(default=50, ge=0)
    connection_init_timeout: float = Field(default=10.0, gt=0)
    # Garbage collection (api/core/collector.py): survivors are frozen every gc_freeze_interval
    # seconds (0 = CPython's defaults), and everything is collected every gc_full_interval.
    gc_freeze_interval: float = Field(default=1.0, ge=0)
    gc_full_interval: float = Field(default=900.0, ge=0)
    # A socket whose client stops reading is closed (1013) after being this long behind.
    ws_behind_limit: float = Field(default=30.0, gt=0)
    ws_per_message_deflate: bool = False
    # `json`: one JSON object per log line (api.core.logs), for log collectors.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics (api/core/metrics.py). In production /metrics on the main port needs
    # `Authorization: Bearer <metrics_token>`; without a token it is served only on
    # metrics_port (0 = no separate listener), which should not be reachable from outside.
    metrics: bool = True
    metrics_token: str = ""
    metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        # A comma-separated list is what people type into an environment variable.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "rate_limit_messages",
        "rate_limit_sign_in",
        "rate_limit_sign_in_per_address",
        "rate_limit_sign_up_per_address",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rates(value)
        return value

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'chat.db'}"

    @property
    def effective_cookie_secure(self) -> bool:
        return self.is_production if self.cookie_secure is None else self.cookie_secure

    @property
    def graphiql_enabled(self) -> bool:
        return (not self.is_production) if self.graphiql is None else self.graphiql

    @property
    def web_client_enabled(self) -> bool:
        return (not self.is_production) if self.web_client is None else self.web_client

    @property
    def metrics_on_main_port(self) -> bool:
        """Whether the app itself answers /metrics (in production only with a token)."""
        return self.metrics and (not self.is_production or bool(self.metrics_token))

    @property
    def cookie_name(self) -> str:
        # The __Host- prefix makes browsers refuse the cookie unless Secure, Path=/ and no Domain.
        return "__Host-session" if self.effective_cookie_secure else "session"

    @property
    def uses_embedded_database(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @cached_property
    def secret(self) -> bytes:
        """The master secret; production requires it, development keeps one in the data folder."""
        if self.secret_key:
            raw = self.secret_key.encode()
            if len(raw) < MIN_SECRET_BYTES:
                raise ConfigurationError(
                    f"SECRET_KEY must be at least {MIN_SECRET_BYTES} bytes long "
                    f"(it is {len(raw)}). Generate one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            return raw
        if self.is_production:
            raise ConfigurationError(
                "SECRET_KEY is required when ENVIRONMENT=production (at least "
                f"{MIN_SECRET_BYTES} bytes). Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return self._development_secret()

    def _development_secret(self) -> bytes:
        # Kept on disk so sessions survive a restart of the development server.
        path = self.data_dir / "secret_key"
        if path.exists():
            stored = path.read_bytes().strip()
            if len(stored) < MIN_SECRET_BYTES:
                raise ConfigurationError(
                    f"{path} holds a secret shorter than {MIN_SECRET_BYTES} bytes; delete the "
                    "file to have a new one generated, or set SECRET_KEY."
                )
            return stored
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48).encode()
        # Written whole to a private temporary file, then linked into place: another process
        # never sees a half-written secret, and only the first link wins.
        temporary = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)
        try:
            os.link(temporary, path)
        except FileExistsError:
            # Another process won the race; use the secret it wrote.
            return self._development_secret()
        finally:
            temporary.unlink()
        log.warning(
            "SECRET_KEY is not set: generated a development secret in %s. "
            "Set SECRET_KEY in production.",
            path,
        )
        return value

    def masked(self) -> dict[str, Any]:
        """Every setting as it takes effect, with secrets masked: safe to log."""
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            value: Any = getattr(self, name)
            if name == "secret_key":
                # Never the secret itself, not even a part of it.
                value = "***" if value else "(generated, in DATA_DIR)"
            elif name == "database_url":
                value = mask_url(self.effective_database_url)
            elif name == "broadcast_url":
                value = mask_url(value)
            elif name == "cookie_secure":
                value = self.effective_cookie_secure
            elif name == "graphiql":
                value = self.graphiql_enabled
            elif isinstance(value, timedelta):
                value = value.total_seconds()
            elif isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, Path | StrEnum):
                value = str(value)
            values[name.upper()] = value
        return values

    def check(self) -> None:
        """Fail fast, with a clear message, on a configuration that cannot run."""
        _ = self.secret
