"""Where domain errors become GraphQL error codes, and internal errors are masked."""

from __future__ import annotations

import logging
import uuid

from graphql import GraphQLError
from strawberry.schema.exceptions import InvalidOperationTypeError

from api.core.errors import DomainError
from api.core.logs import correlation_id as current_correlation_id

log = logging.getLogger("chat.errors")

INTERNAL_MESSAGE = "Internal server error."


def format_errors(errors: list[GraphQLError]) -> None:
    """Give every error a contract code; replace internal ones by a generic message and an id."""
    for error in errors:
        original = error.original_error
        if isinstance(original, DomainError):
            # graphql-core copied original.extensions (with the code) already; keep the message.
            error.extensions = dict(original.extensions)
            continue
        if isinstance(original, InvalidOperationTypeError):
            # For example a query sent over the legacy graphql-ws protocol, which only streams.
            error.extensions = {"code": "BAD_REQUEST"}
            continue
        if original is None or isinstance(original, GraphQLError):
            # Syntax, validation and variable-coercion errors are the client's to fix.
            error.extensions = {"code": "GRAPHQL_VALIDATION_FAILED", **(error.extensions or {})}
            continue
        # The request's own id, which every other line of the request carries too.
        correlation_id = current_correlation_id.get() or uuid.uuid4().hex
        log.error(
            "internal error %s at %s",
            correlation_id,
            error.path,
            exc_info=(type(original), original, original.__traceback__),
        )
        error.message = INTERNAL_MESSAGE
        error.extensions = {"code": "INTERNAL_SERVER_ERROR", "correlationId": correlation_id}
        error.original_error = None
