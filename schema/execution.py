"""graphql-core execution with a fast path for plain objects.

Most of what this API returns is plain data: a Message is a dataclass whose fields are
attributes, its sender likewise. graphql-core completes such an object field by field through
its general machinery (resolve info, path, completion per field), several microseconds each;
for a delivery or a history page that is most of the CPU. Here the selection on a plain object
type is compiled once into a plan (response key, attribute, how to serialize, sub-plan) and
applied directly. Anything else (a field with a resolver or arguments, an abstract type, a
directive, a null where the schema forbids one, a value a scalar refuses) takes graphql-core's
path unchanged, which also produces the errors.

A query or mutation of one plain root field (sendMessage, say) can skip graphql-core's executor
altogether (`RootField`): building an executor, collecting fields, the serial reducer and the
awaitable completion cost more than the resolver's own Python work. Variables and arguments
are still coerced by graphql-core's functions, the resolver is strawberry's, and anything that
is not the plain outcome (a resolver error, a value the plan refuses) is handed back to
graphql-core's executor with the root field's outcome replayed, so errors come out exactly as
graphql-core makes them and a mutation never runs twice.
"""

from __future__ import annotations

import keyword
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLField,
    GraphQLID,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    execute,
    get_argument_values,
    get_variable_values,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.execution.get_variable_signature import (
    GraphQLVariableSignature,
    get_variable_signature,
)
from graphql.execution.values import VariableValues, VariableValueSource
from graphql.pyutils import Path, Undefined, gather_with_cancel
from graphql.type.definition import GraphQLResolveInfoHelpers, is_leaf_type
from graphql.utilities.coerce_input_value import coerce_default_value, coerce_input_value
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.scalars import ID
from strawberry.schema.schema import (
    StrawberryGraphQLCoreExecutionContext,
    _OperationContextAwareGraphQLResolveInfo,
)
from strawberry.types.base import StrawberryMaybe, StrawberryOptional
from strawberry.types.field import StrawberryField

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


# graphql-core's defaults for execute(), which the endpoint's executor runs with.
_MAX_COERCION_ERRORS = 50


def _track(values: Sequence[Any]) -> None:
    # graphql-core tracks such work only for its async_work_finished hook, which no caller of
    # this module sets; no resolver of this schema uses the helpers either.
    return None


def _gather(values: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
    return gather_with_cancel(*values)


_HELPERS = GraphQLResolveInfoHelpers(gather=_gather, track=_track)


# An argument's name, its variable (None: left out), whether it is non-null, and its default
# (Undefined: none), coerced once: defaults of leaf types are constants of the schema.
_Argument = tuple[str, str | None, bool, Any]


@dataclass(frozen=True, slots=True)
class RootField:
    """A query or mutation whose only selection is one root field with a resolver, without
    directives or fragments, returning an object type whose selection has a plan."""

    operation: OperationDefinitionNode
    parent_type: GraphQLObjectType
    field: GraphQLField
    resolve: Callable[..., Any]
    node: FieldNode
    key: str
    path: Path
    spec: _Spec
    # Each variable's (name, signature, whether it must be given, whether it is a leaf, the
    # Python type its scalar takes unchanged), or None when a variable has a default or an
    # invalid type: graphql-core coerces those.
    variables: tuple[tuple[str, GraphQLVariableSignature, bool, bool, type | None], ...] | None
    # How each argument gets its value, or None when graphql-core works it out (literals,
    # a required argument left out): see _arguments.
    arguments: tuple[_Argument, ...] | None

    def coerce(self, inputs: dict[str, Any]) -> VariableValues | None:
        """The variables as graphql-core's get_variable_values coerces them, with the
        signatures worked out once; None for anything but plain success (graphql-core then
        coerces them again and reports the errors)."""
        if self.variables is None:
            return None
        sources: dict[str, VariableValueSource] = {}
        coerced: dict[str, Any] = {}
        for name, signature, required, leaf, native in self.variables:
            value = inputs.get(name, Undefined)
            if value is Undefined:
                if required:
                    return None
                sources[name] = VariableValueSource(signature)
                continue
            if not leaf:
                return None  # lists and input objects: graphql-core bounds their nesting
            sources[name] = VariableValueSource(signature, value)
            if value.__class__ is native:
                # What String's and ID's parse_value return for a str: the str itself.
                coerced[name] = value
                continue
            result = coerce_input_value(value, signature.type)
            if result is Undefined:
                return None
            coerced[name] = result
        return VariableValues(sources, coerced)

    def argument_values(self, variables: VariableValues) -> dict[str, Any] | None:
        """The arguments as graphql-core's get_argument_values gives them, when each is a
        variable or left out; None where it must decide (a null for a non-null argument)."""
        if self.arguments is None:
            return None
        coerced = variables.coerced
        args: dict[str, Any] = {}
        for name, variable, required, default in self.arguments:
            if variable is not None and variable in coerced:
                value = coerced[variable]
                if value is None and required:
                    return None
                args[name] = value
            elif default is not Undefined:
                args[name] = default
            elif required:
                return None
        return args

    def info(self, schema: GraphQLSchema, variables: Any, context: Any) -> GraphQLResolveInfo[Any]:
        """The resolve info strawberry's executor would build for this field."""
        info: Any = _OperationContextAwareGraphQLResolveInfo(
            self.node.name.value,
            [self.node],
            self.field.type,
            self.parent_type,
            self.path,
            schema,
            {},
            None,
            self.operation,
            variables.coerced,
            context,
            optimized_is_awaitable,
            None,
            _HELPERS,
            # operation_extensions: none over HTTP, as in strawberry's executor.
            None,  # type: ignore[arg-type]
        )
        return info  # type: ignore[no-any-return]


def _only_field(document: DocumentNode, operation: OperationDefinitionNode) -> FieldNode | None:
    """The operation's one root field, if it is a query or mutation of exactly that: no
    directives (@disableErrorPropagation ...), fragments, other operations or meta fields."""
    selections = operation.selection_set.selections
    if (
        operation.operation not in (OperationType.QUERY, OperationType.MUTATION)
        or operation.directives
        or len(document.definitions) != 1
        or len(selections) != 1
    ):
        return None
    (node,) = selections
    if not isinstance(node, FieldNode) or node.directives or node.name.value.startswith("__"):
        return None
    return node


# Argument types strawberry passes to a resolver as graphql-core coerced them.
_PLAIN_ARGUMENTS = (str, int, float, bool, ID)


def _direct(field: GraphQLField, schema: GraphQLSchema) -> Callable[..., Any] | None:
    """The root field's resolver without strawberry's per-call wrapper, when that wrapper would
    only rename arguments and build the Info: a resolver with no field extensions or
    permission classes, no exception handlers in the schema, and only scalar arguments (or
    optional ones). Calls it exactly as strawberry does (its get_arguments and get_result)."""
    definition = field.extensions.get(_DEFINITION) if field.extensions else None
    strawberry_schema = getattr(schema, "_strawberry_schema", None)
    resolver = getattr(definition, "base_resolver", None)
    if (
        not isinstance(definition, StrawberryField)
        or resolver is None
        or strawberry_schema is None
        or definition.extensions
        or definition.permission_classes
        or getattr(strawberry_schema.schema_converter, "_exception_handler_specs", True)
        or definition.is_subscription
    ):
        return None
    config = strawberry_schema.config
    names: list[tuple[str, str]] = []
    for argument in definition.arguments:
        type_ = argument.type
        if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
            type_ = type_.of_type
        if type_ not in _PLAIN_ARGUMENTS or argument.python_name is None:
            return None
        names.append((config.name_converter.from_argument(argument), argument.python_name))
    function = resolver.wrapped_func
    if not callable(function):
        return None
    info_class = config.info_class
    takes_self = resolver.self_parameter is not None
    info_name = resolver.info_parameter.name if resolver.info_parameter else None
    sources = [p.name for p in (resolver.parent_parameter, resolver.root_parameter) if p]

    def resolve(source: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
        kwargs = {python: args[name] for name, python in names if name in args}
        for name in sources:
            kwargs[name] = source
        if info_name is not None:
            kwargs[info_name] = info_class(_raw_info=info, _field=definition)
        return function(source, **kwargs) if takes_self else function(**kwargs)

    return resolve


def root_field(
    plans: Plans | None,
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
) -> RootField | None:
    """The operation as a RootField, or None when graphql-core's executor must run it."""
    node = _only_field(document, operation)
    parent_type = schema.get_root_type(operation.operation)
    if node is None or parent_type is None:
        return None
    field = parent_type.fields.get(node.name.value)
    if field is None or field.resolve is None:
        return None
    type_ = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    # Scalars, lists and abstract types: graphql-core completes them.
    spec = _value_plan(field.type, [node], plans) if isinstance(type_, GraphQLObjectType) else None
    if spec is None:
        return None
    key = node.alias.value if node.alias else node.name.value
    path = Path(None, key, parent_type.name)
    resolve = _direct(field, schema) or field.resolve
    variables = _variables(schema, operation)
    arguments = _arguments(field, node)
    return RootField(
        operation, parent_type, field, resolve, node, key, path, spec, variables, arguments
    )


def _arguments(field: GraphQLField, node: FieldNode) -> tuple[_Argument, ...] | None:
    given = {argument.name.value: argument.value for argument in node.arguments or ()}
    arguments: list[_Argument] = []
    for name, definition in field.args.items():
        value = given.pop(name, None)
        if value is not None and not isinstance(value, VariableNode):
            return None  # a literal: graphql-core coerces it
        type_ = definition.type
        required = isinstance(type_, GraphQLNonNull)
        if not is_leaf_type(type_.of_type if isinstance(type_, GraphQLNonNull) else type_):
            return None
        default = coerce_default_value(definition)
        if required and value is None and default is Undefined:
            return None  # validation refuses this; graphql-core reports it
        variable = value.name.value if value is not None else None
        arguments.append((definition.out_name or name, variable, required, default))
    return None if given else tuple(arguments)


def _variables(
    schema: GraphQLSchema, operation: OperationDefinitionNode
) -> tuple[tuple[str, GraphQLVariableSignature, bool, bool, type | None], ...] | None:
    variables = []
    for definition in operation.variable_definitions or ():
        signature = get_variable_signature(schema, definition)
        if isinstance(signature, GraphQLError) or definition.default_value is not None:
            return None
        type_ = signature.type
        required = isinstance(type_, GraphQLNonNull)
        named = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
        leaf = is_leaf_type(named)
        native = str if named is GraphQLString or named is GraphQLID else None
        variables.append((signature.name, signature, required, leaf, native))
    return tuple(variables)


class _Replay:
    """graphql-core middleware: the root field's outcome as the fast path already got it (the
    resolver must not run twice), every other field as usual."""

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error

    def resolve(self, next_: Any, source: Any, info: GraphQLResolveInfo[Any], **args: Any) -> Any:
        if info.path.prev is not None:
            return next_(source, info, **args)
        if self.error is not None:
            raise self.error
        return self.value


async def execute_plainly(
    schema: GraphQLSchema,
    document: DocumentNode,
    *,
    context: Any,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    middleware: list[Any] | None = None,
) -> ExecutionResult:
    """graphql-core's execution with strawberry's executor and the compiled plans."""
    result = execute(
        schema,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        executor_class=PlainExecutor,
        is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
        middleware=middleware,
    )
    if optimized_is_awaitable(result):
        result = await result  # type: ignore[misc]
    assert isinstance(result, ExecutionResult)
    return result


async def execute_root_field(
    root: RootField,
    schema: GraphQLSchema,
    document: DocumentNode,
    *,
    context: Any,
    variables: dict[str, Any] | None,
    operation_name: str | None,
) -> ExecutionResult:
    """The result graphql-core would give for this operation, built without its executor
    when nothing goes wrong."""
    coerced = root.coerce(variables or {})
    if coerced is None:
        checked = get_variable_values(
            schema,
            root.operation.variable_definitions or (),
            variables or {},
            max_errors=_MAX_COERCION_ERRORS,
        )
        if isinstance(checked, list):
            return ExecutionResult(None, checked)
        coerced = checked

    def slowly(replay: _Replay | None = None) -> Awaitable[ExecutionResult]:
        return execute_plainly(
            schema,
            document,
            context=context,
            variables=variables,
            operation_name=operation_name,
            middleware=[replay] if replay is not None else None,
        )

    field = root.field
    args = root.argument_values(coerced)
    if args is None:
        try:
            args = (
                get_argument_values(field, root.node, coerced)
                if field.args or root.node.arguments
                else {}
            )
        except Exception:  # noqa: BLE001 - graphql-core reports it, and nothing has run yet
            return await slowly()
    try:
        value = root.resolve(None, root.info(schema, coerced, context), **args)
        if optimized_is_awaitable(value):
            value = await value
    except Exception as error:  # noqa: BLE001 - graphql-core locates and reports it
        return await slowly(_Replay(error=error))
    try:
        return ExecutionResult({root.key: _apply(root.spec, value)}, None)
    except Exception:  # noqa: BLE001 - not plain after all (or a scalar refused it)
        return await slowly(_Replay(value=value))
