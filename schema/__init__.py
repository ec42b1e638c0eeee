"""The GraphQL schema: types and thin resolvers over the services in api/."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.graphql import OperationType

from schema.chat import ChatMutation, ChatQuery, ChatSubscription
from schema.documents import CachedDocuments
from schema.errors import format_errors
from schema.execution import PlainExecutor
from schema.groups import GroupMutation, MessageMutation
from schema.introspection import IntrospectionDepthRule
from schema.log import EVENT_TYPES, LogQuery, LogSubscription
from schema.signals import SignalMutation, SignalSubscription
from schema.users import UsersMutation, UsersQuery

Query = merge_types("Query", (UsersQuery, ChatQuery, LogQuery))
Mutation = merge_types(
    "Mutation", (UsersMutation, ChatMutation, GroupMutation, MessageMutation, SignalMutation)
)
Subscription = merge_types("Subscription", (ChatSubscription, LogSubscription, SignalSubscription))


class ChatSchema(strawberry.Schema):
    """Strawberry schema whose errors carry the contract's codes and never leak internals."""

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        # A single-result execution (a plain POST) cannot carry a stream: subscriptions are
        # refused there (400, "subscriptions are not allowed ...") instead of failing inside.
        allowed = set(allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES)
        return await super().execute(
            query,
            variable_values=variable_values,
            context_value=context_value,
            root_value=root_value,
            operation_name=operation_name,
            allowed_operation_types=allowed - {OperationType.SUBSCRIPTION},
            operation_extensions=operation_extensions,
        )

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        format_errors(errors)


def document_rules(
    *, production: bool = False, max_depth: int = 0, max_aliases: int = 0
) -> list[type[ASTValidationRule]]:
    """The validation rules beyond the spec's: document limits (0 = off); production also
    refuses introspection."""
    rules: list[type[ASTValidationRule]] = []
    if max_depth:
        rules += QueryDepthLimiter(max_depth=max_depth).validation_rules
        # The depth limiter does not count introspection; this bounds it separately.
        rules.append(IntrospectionDepthRule)
    if max_aliases:
        rules += MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules
    if production:
        rules.append(NoSchemaIntrospectionCustomRule)
    return rules


def build_schema(
    *,
    production: bool = False,
    max_depth: int = 0,
    max_tokens: int = 0,
    max_aliases: int = 0,
    extensions: list[Any] | None = None,
) -> ChatSchema:
    """The schema with its document limits (0 = off); production hides introspection and hints."""
    all_extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = list(
        extensions or []
    )
    if max_tokens:
        # Checked while parsing, so a huge document costs little before it is refused.
        all_extensions.append(lambda: MaxTokensLimiter(max_token_count=max_tokens))
    # The rule classes are made once: the validation cache is keyed by them, and limiters
    # built per request would make a new class (and a cache miss) every time.
    rules = document_rules(production=production, max_depth=max_depth, max_aliases=max_aliases)
    if rules:
        all_extensions.append(lambda: AddValidationRules(rules))
    # Clients send the same few documents over and over: parse and validate each once, in the
    # app's cache (schema.documents), which is bounded in bytes.
    all_extensions.append(CachedDocuments)
    return ChatSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=EVENT_TYPES,
        extensions=all_extensions,
        config=StrawberryConfig(disable_field_suggestions=production),
        execution_context_class=PlainExecutor,
    )


schema = build_schema()
