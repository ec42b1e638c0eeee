"""The access log: one line per GraphQL operation, over HTTP and over WebSocket.

Each line says how the operation came (`http` or `ws`), its type and name (`anonymous` when it
has none), how long it took (a subscription: how long it lived), its outcome (`OK`, or the
first error's `extensions.code`), the HTTP status, and the signed-in user's id. Never a name,
a cookie, a token, a password, variables or message data: the document's operation name is
the only text of the request that is logged.

Every operation runs under its own correlation id (api.core.logs), so every line it causes
carries it, and an internal error reports it to the client.

Hooks, chosen to cost little and to stay out of the hot code: POST /graphql is wrapped here
(`AccessLoggedEndpoint`), and the endpoint only notes the operation and the response it sends
(`note_operation`, `note_response`); the WebSocket protocol handlers take the `AccessLogged`
mixin, which watches the messages that start and end operations.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar
from typing import Any

from graphql import OperationDefinitionNode
from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.logs import CorrelationIds, correlation_id, new_correlation_id

log = logging.getLogger("chat.access")

ANONYMOUS = "anonymous"


class AccessRecord:
    """One operation while it runs."""

    __slots__ = (
        "context",
        "correlation",
        "name",
        "operation",
        "outcome",
        "started",
        "status",
        "transport",
        "user_id",
    )

    def __init__(self, transport: str, correlation: str | None = None) -> None:
        self.transport = transport
        self.started = time.perf_counter()
        self.correlation = correlation or new_correlation_id()
        self.operation = "unknown"
        self.name = ANONYMOUS
        self.outcome = "OK"
        self.status: int | None = None
        self.user_id: uuid.UUID | None = None
        # The operation's context, read at the end: the user is known only once it is
        # authenticated (or has just signed in).
        self.context: Any = None

    def describe(self, node: OperationDefinitionNode | None) -> None:
        if node is not None:
            self.operation = node.operation.value
            self.name = node.name.value if node.name is not None else ANONYMOUS

    def failed(self, errors: Any) -> None:
        """Take the outcome from a response's errors (formatted, with their codes)."""
        if self.outcome == "OK" and errors:
            first = errors[0] if isinstance(errors, list) else errors
            extensions = first.get("extensions") if isinstance(first, dict) else None
            code = extensions.get("code") if isinstance(extensions, dict) else None
            self.outcome = code if isinstance(code, str) else "ERROR"

    def write(self, end: str | None = None) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        user_id = self.user_id
        if user_id is None and self.context is not None:
            user_id = self.context.viewer_id
        duration_ms = round((time.perf_counter() - self.started) * 1000, 2)
        user = str(user_id) if user_id is not None else None
        fields: dict[str, Any] = {
            "transport": self.transport,
            "operationType": self.operation,
            "operationName": self.name,
            "durationMs": duration_ms,
            "outcome": self.outcome,
            "userId": user,
        }
        if self.status is not None:
            fields["status"] = self.status
        if end is not None:
            fields["end"] = end
        token = correlation_id.set(self.correlation)
        try:
            log.info(
                "%s %s %s %s %.2fms user=%s%s",
                self.transport,
                self.operation,
                self.name,
                self.outcome,
                duration_ms,
                user or "-",
                f" status={self.status}" if self.status is not None else f" end={end}",
                extra={"fields": fields},
            )
        finally:
            correlation_id.reset(token)


# The HTTP request being served (its task's own context).
_current: ContextVar[AccessRecord | None] = ContextVar("access_record", default=None)


def note_operation(node: OperationDefinitionNode | None, context: Any) -> None:
    """The endpoint found the operation to run, and built its context."""
    record = _current.get()
    if record is not None:
        record.describe(node)
        record.context = context


def note_response(status: int, payload: dict[str, Any] | None = None) -> None:
    """The endpoint answers with this status and payload (None: a plain-text refusal)."""
    record = _current.get()
    if record is not None:
        record.status = status
        if payload is not None and "errors" in payload:
            record.failed(payload["errors"])


class AccessLoggedEndpoint:
    """POST /graphql under a correlation id, and its access line once it has answered."""

    def __init__(self, endpoint: ASGIApp) -> None:
        self.endpoint = endpoint
        self.ids = CorrelationIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = AccessRecord("http", self.ids())
        tokens = (_current.set(record), correlation_id.set(record.correlation))
        try:
            # The endpoint notes its status (note_response): no wrapper around every send.
            await self.endpoint(scope, receive, send)
        finally:
            if record.status is not None and record.status >= 500 and record.outcome == "OK":
                record.outcome = "INTERNAL_SERVER_ERROR"
            elif record.status in (413, 415):
                # Refused before any GraphQL was read (too large, not JSON).
                record.outcome = "BAD_REQUEST"
            record.write()
            correlation_id.reset(tokens[1])
            _current.reset(tokens[0])


# Protocol messages that start operations, end them, and carry their results.
_STARTS = frozenset({"subscribe", "start"})
_STOPS = frozenset({"complete", "stop"})
_RESULTS = frozenset({"next", "data"})


class AccessLogged:
    """A mixin for strawberry's WebSocket protocol handlers (before the base in the bases):
    an access line for each operation when it ends (the server completes it, it fails, the
    client stops it, or the socket closes), and its correlation id while it starts, which
    the tasks it starts inherit."""

    _access: dict[str, AccessRecord] | None = None

    async def handle_message(self, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind not in _STARTS:
            await super().handle_message(message)  # type: ignore[misc]
            if kind in _STOPS:
                self._end_access(message.get("id"), "stopped")
            return
        operation_id = message["id"]
        record = self._new_access(message)
        token = correlation_id.set(record.correlation)
        try:
            await super().handle_message(message)  # type: ignore[misc]
        finally:
            correlation_id.reset(token)
        # Listed only now: what the handler did with an earlier operation of the same id (the
        # legacy protocol replaces it, completing it first) ends that one, not this one.
        if self._operation_alive(operation_id):
            self._end_access(operation_id, "replaced")
            if self._access is None:
                self._access = {}
            self._access[operation_id] = record
        else:
            # Refused at once (a limit, a repeated id): it never ran.
            record.outcome = "REFUSED" if record.outcome == "OK" else record.outcome
            record.write("refused")

    def _new_access(self, message: dict[str, Any]) -> AccessRecord:
        record = AccessRecord("ws")
        context = getattr(self, "context", None)
        record.context = context
        if context is not None:
            record.user_id = context.viewer_id
            payload = message.get("payload") or {}
            documents = context.state.documents
            if documents is not None:
                # The hub and strawberry prepare the same document: this is a cache hit.
                prepared = documents.prepare(payload["query"])
                if prepared.errors is None:
                    record.describe(prepared.operation(payload.get("operationName")))
        return record

    def _operation_alive(self, operation_id: str) -> bool:
        for name in ("operations", "tasks", "hub_operations"):
            running = getattr(self, name, None)
            if running is not None and operation_id in running:
                return True
        return False

    def _end_access(self, operation_id: object, end: str) -> None:
        if not self._access or not isinstance(operation_id, str):
            return
        found = self._access.pop(operation_id, None)
        if found is not None:
            found.write(end)

    async def send_message(self, message: Any) -> None:
        kind = message.get("type") if self._access else None
        if kind in _RESULTS or kind == "error":
            record = self._access.get(message.get("id")) if self._access else None
            if record is not None:
                payload = message.get("payload")
                record.failed(payload.get("errors") if kind in _RESULTS else payload)
            if kind == "error":
                self._end_access(message.get("id"), "error")
        elif kind == "complete":
            self._end_access(message.get("id"), "complete")
        await super().send_message(message)  # type: ignore[misc]

    def _end_every_access(self) -> None:
        for operation_id in list(self._access or ()):
            self._end_access(operation_id, "closed")

    async def shutdown(self) -> None:
        """graphql-transport-ws: the socket is done."""
        try:
            await super().shutdown()  # type: ignore[misc]
        finally:
            self._end_every_access()

    async def cleanup(self) -> None:
        """Legacy graphql-ws: the socket is done."""
        try:
            await super().cleanup()  # type: ignore[misc]
        finally:
            self._end_every_access()
