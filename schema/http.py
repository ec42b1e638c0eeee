"""GraphQL over HTTP (POST) as one lean ASGI endpoint.

strawberry's HTTP view costs about 0.4 ms of CPU per request on its own (request adapters,
content negotiation for features this API does not offer, an extension pipeline of async
context managers), more than the whole budget of a send. This endpoint does the same work
directly: read the JSON body, take the prepared document from the cache, execute it with
graphql-core on strawberry's schema (strawberry's resolvers and types are unchanged; an
operation of one plain root field runs without graphql-core's executor, schema.execution), format
errors in the one place they are formatted (schema.errors) and answer with orjson.
WebSockets and the GraphiQL page stay with strawberry's view (schema.view).

It follows the GraphQL-over-HTTP spec: `application/graphql-response+json` when the client
accepts it (request errors are then 400 and carry no `data`), `application/json` otherwise.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import ExecutionResult, FieldNode, GraphQLError, OperationDefinitionNode
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.core.logs import correlation_id as current_correlation_id
from api.state import AppState
from schema.access import note_operation, note_response
from schema.context import Context
from schema.documents import is_subscription
from schema.errors import INTERNAL_MESSAGE, format_errors
from schema.execution import execute_plainly, execute_root_field, root_field

log = logging.getLogger(__name__)

GRAPHQL_RESPONSE_JSON = b"application/graphql-response+json"
APPLICATION_JSON = b"application/json"
JSON_MEDIA_TYPES = (APPLICATION_JSON, GRAPHQL_RESPONSE_JSON)


# An operation not looked at yet (None in the cache means: not a RootField).
_UNKNOWN: Any = object()

# JSON nested deeper than this is refused: no GraphQL request needs it, and walking it
# (variable coercion, error formatting) would recurse as deep.
MAX_JSON_DEPTH = 1_000


class BadRequest(Exception):
    """A request that is not a GraphQL request at all: 400 with a GraphQL-shaped error."""


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests more than `limit` arrays and objects (iteratively,
    so the check itself cannot overflow the stack)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _decode_body(body: bytes) -> Any:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = _decode_body_slowly(body)
    # Nesting past the limit needs more brackets than that: counting them (in C) spares the
    # walk for every ordinary request.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _too_deep(payload, MAX_JSON_DEPTH):
        raise BadRequest(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels.")
    return payload


def _decode_body_slowly(body: bytes) -> Any:
    # orjson refuses escaped lone surrogates and nesting past 1,024 levels: the standard
    # library takes the former (the resolver then reports BAD_USER_INPUT on the field), and
    # its RecursionError on the latter is a bad request like any other malformed body.
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        raise BadRequest("The request body is not valid JSON.") from error


def _request_parts(
    payload: Any,
) -> tuple[str, dict[str, Any] | None, str | None]:
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object with a `query` string.")
    query = payload.get("query")
    if not isinstance(query, str) or not query:
        raise BadRequest("The request body must be a JSON object with a `query` string.")
    variables = payload.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise BadRequest("`variables` must be a JSON object or null.")
    operation_name = payload.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise BadRequest("`operationName` must be a string or null.")
    extensions = payload.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise BadRequest("`extensions` must be a JSON object or null.")
    return query, variables, operation_name


class _TooLarge(Exception):
    pass


@dataclass(slots=True)
class _Head:
    """The request headers this endpoint reads, found in one pass over the raw list."""

    content_type: bytes = b""
    content_length: bytes | None = None
    accept: bytes = b""
    origin: bytes | None = None
    cookie: bytes = b""
    authorization: bytes | None = None


def _head(scope: Scope) -> _Head:
    head = _Head()
    for name, value in scope["headers"]:
        if name == b"content-type":
            head.content_type = value
        elif name == b"content-length":
            head.content_length = value
        elif name == b"accept":
            head.accept = value
        elif name == b"origin":
            head.origin = value
        elif name == b"cookie":
            head.cookie = value if not head.cookie else head.cookie + b"; " + value
        elif name == b"authorization":
            head.authorization = value
    return head


def _cookie(header: bytes, name: str) -> str | None:
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


class GraphQLHTTPEndpoint:
    """POST /graphql: queries and mutations (subscriptions go over WebSocket).

    It stands in front of itself too: the app sends every POST /graphql here directly, so the
    guards of the other routes are done inline (api.middleware has the same rules): only JSON
    bodies (415 otherwise: what another site can send without a CORS preflight must not run),
    at most `max_body_bytes` (413, before parsing), and CORS headers for listed origins.
    """

    def __init__(self, *, max_body_bytes: int, allowed_origins: list[str]) -> None:
        self.max_body_bytes = max_body_bytes
        self.allowed_origins = {origin.encode() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = _head(scope)
        media_type = head.content_type.split(b";", 1)[0].strip().lower()
        if media_type not in JSON_MEDIA_TYPES:
            await _plain(send, 415, "POST /graphql needs Content-Type: application/json.")
            return
        extra = self._cors(head)
        try:
            body = await self._read_body(head, receive)
        except _TooLarge:
            await _plain(send, 413, f"Request body too large (limit {self.max_body_bytes} bytes).")
            return
        modern = GRAPHQL_RESPONSE_JSON in head.accept
        cookies = _Cookies()
        state: AppState = scope["app"].state.chat
        seen = _Seen(state.monitoring)
        try:
            query, variables, operation_name = _request_parts(_decode_body(body))
            result = await self._execute(
                scope, receive, state, head, cookies, query, variables, operation_name, seen
            )
        except BadRequest as error:
            failed = {"errors": [{"message": str(error), "extensions": {"code": "BAD_REQUEST"}}]}
            await _respond(send, 400, failed, modern, cookies, extra)
            seen.done("BAD_REQUEST")
            return
        except Exception:
            # A bug outside any resolver (those are masked per field): masked here too, never
            # a dropped connection or a traceback for the client.
            correlation_id = current_correlation_id.get() or uuid.uuid4().hex
            log.exception("internal error %s outside execution", correlation_id)
            extensions = {"code": "INTERNAL_SERVER_ERROR", "correlationId": correlation_id}
            failed = {"errors": [{"message": INTERNAL_MESSAGE, "extensions": extensions}]}
            await _respond(send, 500, failed, modern, cookies, extra)
            seen.done("INTERNAL_SERVER_ERROR")
            return
        if isinstance(result, _RequestError):
            # Parse and validation failures, unknown operations: the request never ran.
            payload: dict[str, Any] = {"errors": [e.formatted for e in result.errors]}
            if not modern:
                payload = {"data": None, **payload}
            status = 400 if modern else 200
            await _respond(send, status, payload, modern, cookies, extra)
            seen.done(_outcome(payload["errors"]))
            return
        payload = {"data": result.data}
        if result.errors:
            payload["errors"] = [error.formatted for error in result.errors]
        await _respond(send, 200, payload, modern, cookies, extra)
        seen.done(_outcome(payload["errors"]) if result.errors else "OK")

    def _cors(self, head: _Head) -> list[tuple[bytes, bytes]]:
        # As Starlette's CORSMiddleware answers a simple request: credentials allowed, and the
        # origin echoed exactly (never "*") only when it is listed.
        if head.origin is None:
            return []
        extra = [(b"access-control-allow-credentials", b"true")]
        if head.origin in self.allowed_origins:
            extra += [(b"access-control-allow-origin", head.origin), (b"vary", b"Origin")]
        return extra

    async def _read_body(self, head: _Head, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = head.content_length
        if limit and declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise _TooLarge
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit and size > limit:
                # A chunked body without Content-Length crossed the limit while being read.
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _execute(
        self,
        scope: Scope,
        receive: Receive,
        state: AppState,
        head: _Head,
        cookies: Response,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        seen: _Seen,
    ) -> ExecutionResult | _RequestError:
        documents = state.documents
        prepared = documents.prepare(query)
        if prepared.errors is not None:
            format_errors(prepared.errors)
            return _RequestError(prepared.errors)
        operation = prepared.operation(operation_name)
        if operation is None:
            message = (
                f"Unknown operation named {operation_name!r}."
                if operation_name
                else "Must provide operation name if query contains multiple operations."
            )
            raise BadRequest(message)
        seen.operation = operation
        if is_subscription(operation):
            raise BadRequest(
                "subscriptions are not allowed over HTTP POST: subscribe over WebSocket "
                "(graphql-transport-ws) on the same endpoint."
            )
        context = Context(
            request=Request(scope, receive),
            response=cookies,
            state=state,
            http_credential=_credential(head, state.settings.cookie_name),
        )
        note_operation(operation, context)
        document = prepared.document
        assert document is not None
        roots = prepared.roots
        root = roots.get(id(operation), _UNKNOWN)
        if root is _UNKNOWN:
            root = roots[id(operation)] = root_field(
                state.plans, documents.schema, document, operation
            )
        if root is not None:
            result = await execute_root_field(
                root,
                documents.schema,
                document,
                context=context,
                variables=variables,
                operation_name=operation_name,
            )
        else:
            result = await execute_plainly(
                documents.schema,
                document,
                context=context,
                variables=variables,
                operation_name=operation_name,
            )
        if result.errors:
            if result.data is None and all(
                error.path is None
                and (error.original_error is None or isinstance(error.original_error, GraphQLError))
                for error in result.errors
            ):
                # Variable coercion failed (graphql-core wraps the scalar's own GraphQLError):
                # the operation never ran. Errors of fields that ran always have a path.
                format_errors(result.errors)
                return _RequestError(result.errors)
            format_errors(result.errors)
        return result


class _Cookies(Response):
    """Where resolvers set cookies (Context.response: set_cookie, delete_cookie); only its
    set-cookie headers are sent. A Response's own constructor (status, body, media type,
    header list) is work every request would pay for what a sign-in alone uses."""

    def __init__(self) -> None:
        self.raw_headers = []


class _Seen:
    """What /metrics learns of one request: its operation (once known) and its outcome."""

    __slots__ = ("monitoring", "operation", "started")

    def __init__(self, monitoring: Any) -> None:
        self.monitoring = monitoring
        self.operation: OperationDefinitionNode | None = None
        self.started = time.perf_counter() if monitoring is not None else 0.0

    def done(self, outcome: str) -> None:
        if self.monitoring is None:
            return
        metrics = self.monitoring.metrics
        operation = self.operation
        if operation is None:
            metrics.operation("unknown", None, outcome)
            return
        name = operation.name.value if operation.name is not None else None
        metrics.operation(operation.operation.value, name, outcome)
        first = operation.selection_set.selections[0]
        if isinstance(first, FieldNode) and first.name.value == "sendMessage":
            metrics.send(outcome, time.perf_counter() - self.started)


def _outcome(errors: list[Any]) -> str:
    """The code of the first error (codes are a fixed set: schema.errors)."""
    extensions = errors[0].get("extensions") if errors else None
    code = extensions.get("code") if isinstance(extensions, dict) else None
    return code if isinstance(code, str) else "ERROR"


class _RequestError:
    __slots__ = ("errors",)

    def __init__(self, errors: list[GraphQLError]) -> None:
        self.errors = errors


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # A lone surrogate echoed in an error message: json escapes what orjson refuses.
        return json.dumps(payload, separators=(",", ":")).encode()


def _credential(head: _Head, cookie_name: str) -> str | None:
    """The encrypted session value: `Authorization: Bearer`, else the session cookie."""
    if head.authorization is not None:
        value = head.authorization.decode("latin-1")
        if value[:7].lower() == "bearer ":
            return value[7:].strip() or None
    return _cookie(head.cookie, cookie_name) if head.cookie else None


async def _plain(send: Send, status: int, text: str) -> None:
    note_response(status)
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond(
    send: Send,
    status: int,
    payload: dict[str, Any],
    modern: bool,
    cookies: Response,
    extra: list[tuple[bytes, bytes]],
) -> None:
    note_response(status, payload)
    body = _encode(payload)
    media = GRAPHQL_RESPONSE_JSON if modern else APPLICATION_JSON
    headers = [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    headers.extend(header for header in cookies.raw_headers if header[0] == b"set-cookie")
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
