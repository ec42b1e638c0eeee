"""graphql-core execution with a fast path for plain objects.

Most of what this API returns is plain data: a Message is a dataclass whose fields are
attributes, its sender likewise. graphql-core completes such an object field by field through
its general machinery (resolve info, path, completion per field), several microseconds each;
for a delivery or a history page that is most of the CPU. Here the selection on a plain object
type is compiled once into a plan (response key, attribute, how to serialize, sub-plan) and
applied directly. Anything else (a field with a resolver or arguments, an abstract type, a
directive, a null where the schema forbids one, a value a scalar refuses) takes graphql-core's
path unchanged, which also produces the errors.
"""

from __future__ import annotations

import keyword
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    OperationDefinitionNode,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

_DEFINITION = "strawberry-definition"


class _Fallback(Exception):
    """This value is not plain after all: let graphql-core complete it."""


Plan = Callable[[Any], dict[str, Any]]


# What a plan raises on a value that is not plain after all (the caller then executes).
PLAN_ERRORS = (_Fallback, TypeError, ValueError, AttributeError)


class Plans:
    """Compiled plans by (object type, the selection's field nodes), bounded; built with the
    app (AppState.plans). The nodes are kept alive in the entry, so their ids cannot be reused
    by another document while the entry exists."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._plans: OrderedDict[tuple[Any, ...], tuple[Any, Plan | None]] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> tuple[Any, Plan | None] | None:
        return self._plans.get(key)

    def put(self, key: tuple[Any, ...], nodes: list[Any], plan: Plan | None) -> None:
        self._plans[key] = (nodes, plan)
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)


def _plain_field(field: Any) -> str | None:
    """The attribute behind a field that only reads an attribute, or None."""
    definition = field.extensions.get(_DEFINITION) if field.extensions else None
    if definition is None or field.args:
        return None
    if getattr(definition, "base_resolver", None) is not None:
        return None
    if getattr(definition, "permission_classes", None) or getattr(definition, "extensions", None):
        return None
    name = getattr(definition, "python_name", None)
    return name if isinstance(name, str) else None


# Serialized as they are when the value already has this Python type (graphql-core's own
# serializers would return it unchanged); other values go through the scalar's serializer.
# (Int only within 32 bits, as GraphQL's Int is; Float goes through its serializer, which refuses
# NaN and infinities.)
_NATIVE = {"String": str, "ID": str, "Int": int, "Boolean": bool}


@dataclass(frozen=True, slots=True)
class _Spec:
    """How a field's value becomes its result: `convert` (a serializer, a list plan or an
    object plan), whether null is allowed, and the Python type that needs no conversion."""

    convert: Callable[[Any], Any]
    nullable: bool
    native: type | None = None


def _value_plan(type_: GraphQLOutputType, nodes: list[Any], plans: Plans | None) -> _Spec | None:
    """How to turn a value of `type_` into its result, or None when it is not plain."""
    nullable = True
    if isinstance(type_, GraphQLNonNull):
        nullable, type_ = False, type_.of_type
    if isinstance(type_, GraphQLScalarType):
        return _Spec(type_.serialize, nullable, _NATIVE.get(type_.name))
    if isinstance(type_, GraphQLList):
        item = _value_plan(type_.of_type, nodes, plans)
        if item is None:
            return None

        def listed(value: Any) -> list[Any]:
            return [_apply(item, each) for each in value]

        return _Spec(listed, nullable)
    if isinstance(type_, GraphQLObjectType):
        sub = object_plan(plans, type_, nodes)
        return _Spec(sub, nullable) if sub is not None else None
    return None  # enums, interfaces, unions: graphql-core's path


def _apply(spec: _Spec, value: Any) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise _Fallback
    if spec.native is not None and spec.native is not int and value.__class__ is spec.native:
        return value
    return spec.convert(value)


def object_plan(plans: Plans | None, type_: GraphQLObjectType, nodes: list[Any]) -> Plan | None:
    """The plan of a selection (given by its field nodes) on an object type, or None when
    graphql-core must complete it."""
    key = (type_, *(id(node) for node in nodes))
    entry = plans.get(key) if plans is not None else None
    if entry is not None:
        return entry[1]
    plan = _compile(plans, type_, nodes)
    if plans is not None:
        plans.put(key, nodes, plan)
    return plan


def _compile(plans: Plans | None, type_: GraphQLObjectType, nodes: list[Any]) -> Plan | None:
    if type_.is_type_of is not None:
        return None
    steps: list[tuple[str, str | None, Any]] = []
    for node in nodes:
        if node.directives or node.selection_set is None:
            return None
        for selection in node.selection_set.selections:
            step = _step(plans, type_, selection)
            if step is None:
                return None
            steps.append(step)
    if len({key for key, _, _ in steps}) != len(steps):
        return None  # the same key selected twice: let graphql-core merge them
    return _generate(steps)


def _generate(steps: list[tuple[str, str | None, Any]]) -> Plan:
    """A function building the result dict of one object: one attribute read and, where the
    value is not already of its scalar's Python type, one conversion per field. Generated
    source, since closures per field cost more than the work itself on a page of 50 messages.
    Keys and attributes are GraphQL and Python names (validated), embedded with repr()."""
    namespace: dict[str, Any] = {"Fallback": _Fallback}
    lines = ["def plan(source):"]
    items = []
    for index, (key, attribute, spec) in enumerate(steps):
        name = f"v{index}"
        if attribute is None:  # __typename
            namespace[f"t{index}"] = spec
            items.append(f"{key!r}: t{index}")
            continue
        namespace[f"c{index}"] = spec.convert
        if attribute.isidentifier() and not keyword.iskeyword(attribute):
            lines.append(f"    {name} = source.{attribute}")
        else:
            lines.append(f"    {name} = getattr(source, {attribute!r})")
        if spec.native is int:
            converted = (
                f"({name} if {name}.__class__ is int and -2147483648 <= {name} <= 2147483647"
                f" else c{index}({name}))"
            )
        elif spec.native is not None:
            namespace[f"n{index}"] = spec.native
            converted = f"({name} if {name}.__class__ is n{index} else c{index}({name}))"
        else:
            converted = f"c{index}({name})"
        if spec.nullable:
            items.append(f"{key!r}: (None if {name} is None else {converted})")
        else:
            lines.append(f"    if {name} is None:\n        raise Fallback")
            items.append(f"{key!r}: {converted}")
    lines.append("    return {" + ", ".join(items) + "}")
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from validated names
    plan: Plan = namespace["plan"]
    return plan


def _step(
    plans: Plans | None, type_: GraphQLObjectType, selection: Any
) -> tuple[str, str | None, Any] | None:
    """(response key, attribute, how to convert its value), or None when graphql-core must
    decide. For __typename the attribute is None and the third item the type's name."""
    if selection.kind != "field" or selection.directives:
        return None  # fragments and directives
    key = selection.alias.value if selection.alias else selection.name.value
    if selection.name.value == "__typename":
        return key, None, type_.name
    field = type_.fields.get(selection.name.value)
    attribute = _plain_field(field) if field is not None else None
    if field is None or attribute is None:
        return None
    spec = _value_plan(field.type, [selection], plans)
    if spec is None:
        return None
    return key, attribute, spec


def event_plan(
    plans: Plans | None, schema: GraphQLSchema, operation: OperationDefinitionNode
) -> tuple[str, Plan] | None:
    """For a subscription whose result is its event's selection and nothing else (one root
    field, no directives or fragments at the root): the response key and the plan that turns
    an event into that field's value. Subscription fields resolve to the event itself."""
    selections = operation.selection_set.selections
    root = schema.subscription_type
    if root is None or len(selections) != 1:
        return None
    (selection,) = selections
    if not isinstance(selection, FieldNode) or selection.directives:
        return None
    field = root.fields.get(selection.name.value)
    if field is None:
        return None
    type_ = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if not isinstance(type_, GraphQLObjectType):
        return None
    plan = object_plan(plans, type_, [selection])
    if plan is None:
        return None
    return (selection.alias.value if selection.alias else selection.name.value), plan


class PlainExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's graphql-core executor, completing plain objects by compiled plans."""

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: FieldDetailsList,
        info: GraphQLResolveInfo[Any],
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        plans: Plans | None = getattr(getattr(self.context_value, "state", None), "plans", None)
        nodes = [details.node for details in field_details_list]
        plan = object_plan(plans, return_type, nodes)
        if plan is not None:
            try:
                return plan(result)
            except PLAN_ERRORS:
                pass  # graphql-core reports the error properly
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )
