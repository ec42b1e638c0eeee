"""Execute a subscription event once for all subscribers that asked for the same thing.

A message published to a room wakes every subscription of that room. graphql-core would run
each subscriber's selection set on the event separately, which costs far more than writing
the result to a socket. Events of a shareable type are the same object for every subscriber
(see schema.chat.shared_message), and a result depends only on the event, the document and the
variables used inside the selection; so the first subscriber's result serves the others.

Authorization is unaffected: membership is checked when each subscription starts, and the root
field's own arguments (roomId, after) only choose which events a subscriber gets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Hashable
from typing import Any, TypeVar

from graphql import ExecutionResult, FieldNode, OperationType, VariableNode, visit
from graphql.language import Visitor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

T = TypeVar("T", bound=type)

_shareable: set[type] = set()


def shareable(cls: T) -> T:
    """Mark a type whose instances, as subscription events, are shared by all subscribers."""
    _shareable.add(cls)
    return cls


class _VariableCollector(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.add(node.name.value)


class _Lru:
    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        return self.entries.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        self.entries[key] = value
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


class SharedResults:
    """Finished results by (event, request shape); entries keep their event alive, so an id
    is never reused while its entry exists."""

    def __init__(self, size: int = 4096) -> None:
        self._results = _Lru(size)
        self._variables = _Lru(1024)
        self.hits = 0
        self.misses = 0

    def variables_of(
        self, executor: StrawberryGraphQLCoreExecutionContext, shape: Hashable
    ) -> tuple[str, ...]:
        names: tuple[str, ...] | None = self._variables.get(shape)
        if names is None:
            collector = _VariableCollector()
            for selection in executor.operation.selection_set.selections:
                if isinstance(selection, FieldNode):
                    for directive in selection.directives or ():
                        visit(directive, collector)
                    if selection.selection_set is not None:
                        visit(selection.selection_set, collector)
                else:
                    visit(selection, collector)
            for fragment in executor.fragment_definitions.values():
                visit(fragment, collector)
            names = tuple(sorted(collector.names))
            self._variables.put(shape, names)
        return names

    def get(self, key: Hashable, event: object) -> ExecutionResult | None:
        entry = self._results.get(key)
        if entry is not None and entry[0] is event:
            self.hits += 1
            result: ExecutionResult = entry[1]
            return result
        self.misses += 1
        return None

    def put(self, key: Hashable, event: object, result: ExecutionResult) -> None:
        if not result.errors:
            self._results.put(key, (event, result))


shared_results = SharedResults()


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """graphql-core executor that reuses one subscriber's result for the same event."""

    def _shared_key(self) -> Hashable | None:
        event = self.root_value
        if type(event) not in _shareable:
            return None
        operation = self.operation
        if operation.operation is not OperationType.SUBSCRIPTION or operation.loc is None:
            return None
        shape = (operation.loc.source.body, operation.name.value if operation.name else None)
        names = shared_results.variables_of(self, shape)
        key = (
            id(event),
            shape,
            tuple((name, self.variable_values.coerced.get(name)) for name in names),
        )
        try:
            hash(key)
        except TypeError:
            return None  # an unhashable variable value (an input object): execute as usual
        return key

    def execute_operation(self, serially: bool | None = None) -> Any:
        key = self._shared_key()
        if key is None:
            return super().execute_operation(serially)
        cached = shared_results.get(key, self.root_value)
        if cached is not None:
            return cached
        result = super().execute_operation(serially)
        if isinstance(result, Awaitable):
            return self._remember(key, result)
        if isinstance(result, ExecutionResult):
            shared_results.put(key, self.root_value, result)
        return result

    async def _remember(self, key: Hashable, pending: Awaitable[Any]) -> Any:
        result = await pending
        if isinstance(result, ExecutionResult):
            shared_results.put(key, self.root_value, result)
        return result
