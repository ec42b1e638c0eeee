"""Parse and validate each distinct GraphQL document once, within the document limits.

Clients send the same few documents over and over; parsing and validating one costs far more
than executing it. Results are cached by the document's text, bounded by total bytes, and
documents larger than `max_document_bytes` are prepared every time instead of being kept (a
hostile client cannot fill memory with large one-off documents).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
)
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

# Documents up to this size are cached; larger ones are prepared every time.
MAX_CACHED_DOCUMENT_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed, validated document, or the errors that refuse it."""

    document: DocumentNode | None
    errors: list[GraphQLError] | None
    size: int
    # What schema.execution found each operation to be (a RootField, or None: not one), by
    # the operation node's id; kept here so it lives exactly as long as the cached document.
    roots: dict[int, Any] = field(default_factory=dict, compare=False)

    def operation(self, name: str | None) -> OperationDefinitionNode | None:
        """The operation to run: the one named, or the only one."""
        assert self.document is not None
        operations = [
            definition
            for definition in self.document.definitions
            if isinstance(definition, OperationDefinitionNode)
        ]
        if name is None:
            return operations[0] if len(operations) == 1 else None
        return next((op for op in operations if op.name and op.name.value == name), None)


class Documents:
    """The prepare cache of one schema and one set of limits (built with the app)."""

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        rules: Sequence[type[ASTValidationRule]] = (),
        max_tokens: int = 0,
        hide_suggestions: bool = False,
        max_bytes: int = 4 * 1024 * 1024,
        max_document_bytes: int = MAX_CACHED_DOCUMENT_BYTES,
    ) -> None:
        self.schema = schema
        self.rules = (*specified_rules, *rules)
        self.max_tokens = max_tokens or None
        self.hide_suggestions = hide_suggestions
        self.max_bytes = max_bytes
        self.max_document_bytes = max_document_bytes
        self._cache: OrderedDict[str, Prepared] = OrderedDict()
        self._bytes = 0

    @property
    def cached_bytes(self) -> int:
        """The size of the cached documents' text."""
        return self._bytes

    def prepare(self, query: str) -> Prepared:
        """The document parsed and validated (from the cache when it was seen before)."""
        prepared = self._cache.get(query)
        if prepared is not None:
            self._cache.move_to_end(query)
            return prepared
        prepared = self._prepare(query)
        if prepared.size <= self.max_document_bytes:
            self._cache[query] = prepared
            self._bytes += prepared.size
            while self._bytes > self.max_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._bytes -= evicted.size
        return prepared

    def _prepare(self, query: str) -> Prepared:
        size = len(query)
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError as error:
            return Prepared(None, [error], size)
        invalid = validate_document(self.schema, document, self.rules)
        if invalid:
            if self.hide_suggestions:
                for each in invalid:
                    _remove_suggestion(each)
            return Prepared(None, invalid, size)
        return Prepared(document, None, size)


def _remove_suggestion(error: GraphQLError) -> None:
    # Production hides "Did you mean ...?": it would map the schema for whoever probes it.
    if error.message.startswith("Cannot query field") and "Did you mean" in error.message:
        error.message = error.message.split("Did you mean")[0].strip()


def is_subscription(operation: OperationDefinitionNode) -> bool:
    """Whether an operation is a subscription."""
    return operation.operation is OperationType.SUBSCRIPTION


class CachedDocuments(SchemaExtension):
    """strawberry's parse and validate steps (WebSocket operations) through the app's
    Documents, so one cache, bounded in bytes, serves HTTP and WebSocket alike.

    strawberry's own ParserCache and ValidationCache are bounded by entry count and keep
    whole documents as keys: 512 entries of 60 KB of comments each (under the token limit)
    held 30 MB. A document the cache refuses (invalid) goes through strawberry's own steps,
    which report its errors the usual way.
    """

    def on_parse(self) -> Iterator[None]:
        execution = self.execution_context
        state: Any = getattr(execution.context, "state", None)
        documents: Documents | None = getattr(state, "documents", None)
        if documents is not None and execution.query and execution.graphql_document is None:
            prepared = documents.prepare(execution.query)
            if prepared.document is not None:
                execution.graphql_document = prepared.document
                # Validated with the same rules already: strawberry skips its own validation.
                execution.pre_execution_errors = []
        yield
