"""Log output: plain text or one JSON object per line, each line with its request's
correlation id; the one place that configures logging for the process."""

from __future__ import annotations

import itertools
import json
import logging
import logging.config
import secrets
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

# The id of the request (an HTTP request, or one WebSocket operation) whose code is running:
# every log line it causes carries it, and an internal error reports it to the client, so a
# user's report leads to every line of that request.
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def new_correlation_id() -> str:
    """A fresh id (32 hex digits, as clients already see in `extensions.correlationId`)."""
    return secrets.token_hex(16)


class CorrelationIds:
    """Fresh ids for a stream of requests, in the same 32 hex digits: a random half for the
    process (ids stay unique across instances and restarts) and a counter. An id only has
    to be unique, not secret, and each random one cost a system call per request."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


# alembic announces each of its plugins at INFO on every migration run: noise at every start.
QUIET_LOGGERS = {"alembic.runtime.plugins": "WARNING"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlationId, and the fields
    a line passes as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = correlation_id.get()
        if request is not None:
            entry["correlationId"] = request
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            # A lone surrogate in a message: json escapes what orjson refuses.
            return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then the correlation id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request = correlation_id.get()
        return text if request is None else f"{text} [{request}]"


def dict_config(log_format: LogFormat, *, level: str = "INFO") -> dict[str, Any]:
    """A logging.config.dictConfig for the whole process (uvicorn's loggers included: they
    pass their lines up to the root's one handler)."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    loggers: dict[str, Any] = {
        # uvicorn sets its own loggers' levels from --log-level; their lines go to the root.
        "uvicorn": {"handlers": [], "propagate": True},
        "uvicorn.error": {"handlers": [], "propagate": True},
        "uvicorn.access": {"handlers": [], "propagate": True},
    }
    loggers |= {name: {"level": quiet} for name, quiet in QUIET_LOGGERS.items()}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"chat": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "chat",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": loggers,
    }


def configure(log_format: LogFormat, *, level: str = "INFO") -> None:
    """Configure the process's logging (the CLI does, once, before anything logs)."""
    logging.config.dictConfig(dict_config(log_format, level=level))
