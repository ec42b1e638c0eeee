"""What makes two subscribers' results the same (the sharing rule of the delivery hub).

Two subscriptions share one result per event when their document, operation and the values of
the variables their selection reads are the same, and, for a selection that reads a
viewer-dependent field (marked with VIEWER_DEPENDENT in the strawberry field's metadata), when
their viewer is the same too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    TypeInfo,
    TypeInfoVisitor,
    VariableNode,
    Visitor,
    visit,
)

from schema.documents import MAX_CACHED_DOCUMENT_BYTES
from schema.execution import Plan, Plans, event_plan

# Metadata key marking a strawberry field whose value depends on who asks (Reaction.me,
# Room.unreadCount): selections that read one are never shared between viewers.
VIEWER_DEPENDENT = "viewer_dependent"


@dataclass(frozen=True, slots=True)
class Shape:
    """What makes two subscribers' results the same: the document, the operation, the values
    of the variables its selection reads, and (for viewer-dependent selections) the viewer."""

    document: DocumentNode
    operation_name: str | None
    selection_variables: tuple[str, ...]
    per_viewer: bool
    # (response key, plan) when the result is the event's plain selection and nothing else:
    # then an event's result needs no execution at all (schema.execution.event_plan).
    direct: tuple[str, Plan] | None = None

    def key(self, variables: dict[str, Any] | None, context: Any) -> tuple[Any, ...]:
        """What a subscription's results are shared by: subscriptions with equal keys get one
        result per event."""
        values = variables or {}
        viewer = getattr(context, "viewer_id", None) if self.per_viewer else None
        return (
            id(self),
            tuple(hashable(values.get(name)) for name in self.selection_variables),
            viewer,
        )


class Shapes:
    """Shapes by (document text, operation name), computed once; bounded in bytes like the
    document cache (the keys hold whole documents), and large documents are not kept."""

    def __init__(
        self,
        schema: GraphQLSchema,
        plans: Plans | None = None,
        max_bytes: int = 4 * 1024 * 1024,
        max_document_bytes: int = MAX_CACHED_DOCUMENT_BYTES,
    ) -> None:
        self.schema = schema
        self.plans = plans
        self.max_bytes = max_bytes
        self.max_document_bytes = max_document_bytes
        self._shapes: OrderedDict[tuple[str, str | None], Shape] = OrderedDict()
        self._bytes = 0

    @property
    def cached_bytes(self) -> int:
        """The size of the cached documents' text."""
        return self._bytes

    def of(self, document: DocumentNode, query: str, operation_name: str | None) -> Shape:
        key = (query, operation_name)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._compute(document, operation_name)
            if len(query) <= self.max_document_bytes:
                self._shapes[key] = shape
                self._bytes += len(query)
                while self._bytes > self.max_bytes:
                    (evicted, _), _ = self._shapes.popitem(last=False)
                    self._bytes -= len(evicted)
        return shape

    def _compute(self, document: DocumentNode, operation_name: str | None) -> Shape:
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        operation = next(
            (
                op
                for op in operations
                if operation_name is None
                or (op.name is not None and op.name.value == operation_name)
            ),
            operations[0],
        )
        variables = _SelectionVariables()
        viewer = _ViewerFields(TypeInfo(self.schema))
        # The root field's own arguments (roomId, after) only choose which events arrive;
        # everything below it, and directives, decide what a result holds.
        for selection in operation.selection_set.selections:
            if isinstance(selection, FieldNode):
                for directive in selection.directives or ():
                    visit(directive, variables)
                if selection.selection_set is not None:
                    visit(selection.selection_set, variables)
            else:
                visit(selection, variables)
        fragments = [d for d in document.definitions if not isinstance(d, OperationDefinitionNode)]
        for fragment in fragments:
            visit(fragment, variables)
        visit(document, TypeInfoVisitor(viewer.type_info, viewer))
        return Shape(
            document=document,
            operation_name=operation_name,
            selection_variables=tuple(sorted(variables.names)),
            per_viewer=viewer.found,
            direct=event_plan(self.plans, self.schema, operation),
        )


class _SelectionVariables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


class _ViewerFields(Visitor):
    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.found = False

    def enter_field(self, node: FieldNode, *_: Any) -> None:
        field = self.type_info.get_field_def()
        definition = field.extensions.get("strawberry-definition") if field else None
        metadata = getattr(definition, "metadata", None) or {}
        if metadata.get(VIEWER_DEPENDENT):
            self.found = True


def hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return value
