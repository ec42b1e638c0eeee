"""A depth limit for introspection, which the document depth limit does not count.

strawberry's QueryDepthLimiter skips introspection fields, so that GraphiQL and codegen can
send the standard introspection query (deeper than any operation of this API). That left
`{ __schema { types { fields { type { fields { type { ... } } } } } } }` unbounded, and its
result grows geometrically with each level. This rule lets introspection go exactly as deep
as graphql-js's `getIntrospectionQuery` with every option on (and graphql-core's port of it)
and refuses anything deeper.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_introspection_query,
    parse,
)
from graphql.validation import ValidationRule

_ROOTS = ("__schema", "__type")
# graphql-js 17 and graphql-core nest `ofType` 9 levels deep by default (graphql-js 16: 7).
_STANDARD_TYPE_DEPTH = 9


class _Walk:
    """Depths of selection sets with fragments expanded; each fragment's depth is computed
    once (a chain of fragments that each spread the next twice would otherwise cost 2^n)."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._depths: dict[str, int] = {}
        self._entered: set[str] = set()

    def depth(self, selection_set: SelectionSetNode | None) -> int:
        """Fields nested below a selection set."""
        if selection_set is None:
            return 0
        deepest = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                deepest = max(deepest, 1 + self.depth(selection.selection_set))
            elif isinstance(selection, InlineFragmentNode):
                deepest = max(deepest, self.depth(selection.selection_set))
            elif isinstance(selection, FragmentSpreadNode):
                deepest = max(deepest, self._fragment_depth(selection.name.value))
        return deepest

    def _fragment_depth(self, name: str) -> int:
        if name in self._depths:
            return self._depths[name]
        fragment = self.fragments.get(name)
        if fragment is None or name in self._entered:
            return 0  # unknown or cyclic: other rules refuse the document
        self._entered.add(name)
        self._depths[name] = self.depth(fragment.selection_set)
        return self._depths[name]

    def roots(self, selection_set: SelectionSetNode) -> list[FieldNode]:
        """The `__schema` and `__type` fields selected at the root (each fragment once)."""
        found: list[FieldNode] = []
        pending = [selection_set]
        expanded: set[str] = set()
        while pending:
            for selection in pending.pop().selections:
                if isinstance(selection, FieldNode):
                    if selection.name.value in _ROOTS:
                        found.append(selection)
                elif isinstance(selection, InlineFragmentNode):
                    pending.append(selection.selection_set)
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self.fragments.get(name)
                    if fragment is not None and name not in expanded:
                        expanded.add(name)
                        pending.append(fragment.selection_set)
        return found


def introspection_depth(document: DocumentNode) -> int:
    """How deep the deepest introspection selection of a document goes (0 without any)."""
    walk = _Walk(document)
    deepest = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            for root in walk.roots(definition.selection_set):
                deepest = max(deepest, 1 + walk.depth(root.selection_set))
    return deepest


@cache
def standard_introspection_depth() -> int:
    """The depth of the standard introspection query with every option on."""
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
        experimental_directive_deprecation=True,
        one_of=True,
        type_depth=_STANDARD_TYPE_DEPTH,
    )
    return introspection_depth(parse(query))


class IntrospectionDepthRule(ValidationRule):
    """Refuse introspection deeper than the standard introspection query."""

    def enter_document(self, node: DocumentNode, *_: Any) -> None:
        limit = standard_introspection_depth()
        depth = introspection_depth(node)
        if depth > limit:
            self.report_error(
                GraphQLError(
                    f"Introspection is {depth} levels deep; the standard introspection query"
                    f" needs {limit}, and deeper introspection is refused."
                )
            )
