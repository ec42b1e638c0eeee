"""An operation of one plain root field (sendMessage, say) runs without graphql-core's executor,
and answers exactly as the executor does: the same data, the same errors, the same status."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
import strawberry
from graphql import (
    GraphQLError,
    OperationDefinitionNode,
    get_argument_values,
    get_variable_values,
    parse,
)

import schema.http
from schema.errors import format_errors
from schema.execution import (
    Plans,
    RootField,
    _direct,
    execute_plainly,
    execute_root_field,
    root_field,
)
from tests.support import GraphQLClient, RunningServer

MODERN = "application/graphql-response+json"

SEND = """
mutation Send($roomId: ID!, $data: String!, $clientMessageId: String) {
  sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) {
    id roomId seq type data clientMessageId createdAt cursor sender { id name }
  }
}
"""
SEND_ALIASED = """
mutation ($roomId: ID!, $data: String!, $clientMessageId: String) {
  sent: sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) {
    __typename number: seq data
  }
}
"""
SEND_LITERAL = 'mutation { sendMessage(roomId: "not-a-room", data: "hi") { seq } }'
SEND_DIRECT = """
mutation ($to: String!, $data: String!, $clientMessageId: String) {
  sendDirectMessage(to: $to, data: $data, clientMessageId: $clientMessageId) { seq data }
}
"""
ME = "query Me { me { id name } }"
DIRECT_ROOM = """
query ($with: String!) {
  directRoom(with: $with) { id name members { name } lastMessage { seq data sender { name } } }
}
"""


async def _post(
    client: GraphQLClient, query: str, variables: Any, accept: str | None
) -> tuple[int, str, Any]:
    headers = {"accept": accept} if accept else {}
    response = await client.http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    return response.status_code, response.headers["content-type"], response.json()


@pytest.fixture
async def people(
    server: RunningServer, make_client: object
) -> tuple[GraphQLClient, GraphQLClient, GraphQLClient, str]:
    """Alice, Bob, a client that is not signed in, and Alice and Bob's room (one message)."""
    make = cast(Callable[[], GraphQLClient], make_client)
    alice, bob, anonymous = make(), make(), make()
    await alice.sign_up()
    await bob.sign_up()
    assert bob.user is not None
    data = await alice.data(DIRECT_ROOM, {"with": bob.user["name"]})
    room_id: str = data["directRoom"]["id"]
    await alice.data(SEND, {"roomId": room_id, "data": "first", "clientMessageId": "c-1"})
    return alice, bob, anonymous, room_id


async def test_every_outcome_is_the_same_with_and_without_the_executor(
    server: RunningServer,
    people: tuple[GraphQLClient, GraphQLClient, GraphQLClient, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob, anonymous, room_id = people
    assert bob.user is not None
    bob_name = bob.user["name"]
    # Retries of a stored clientMessageId answer the same message each time, so a send can be
    # made twice and compared.
    again = {"roomId": room_id, "data": "first", "clientMessageId": "c-1"}
    cases: list[tuple[GraphQLClient, str, Any]] = [
        (alice, SEND, again),
        (alice, SEND_ALIASED, again),
        (alice, SEND_DIRECT, {"to": bob_name, "data": "first", "clientMessageId": "c-1"}),
        (anonymous, SEND, again),  # UNAUTHENTICATED
        (alice, SEND, {**again, "roomId": str(uuid.uuid4())}),  # NOT_FOUND
        (alice, SEND, {**again, "roomId": "nope"}),  # BAD_USER_INPUT
        (alice, SEND, {**again, "data": ""}),  # BAD_USER_INPUT
        (alice, SEND_LITERAL, None),
        (alice, SEND, {"roomId": room_id}),  # a required variable missing
        (alice, SEND, {**again, "data": 5}),  # a variable of the wrong type
        (alice, SEND, {**again, "roomId": None}),  # null for a non-null variable
        (alice, SEND_DIRECT, {"to": "nobody-" + uuid.uuid4().hex[:8], "data": "x"}),
        (alice, ME, None),
        (anonymous, ME, None),  # null, no error
        (alice, DIRECT_ROOM, {"with": bob_name}),
        (alice, DIRECT_ROOM, {"with": alice.user["name"] if alice.user else ""}),
    ]
    taken: list[RootField] = []

    async def spy(root: RootField, *args: Any, **kwargs: Any) -> Any:
        taken.append(root)
        return await execute_root_field(root, *args, **kwargs)

    async def executor_only(root: RootField, *args: Any, **kwargs: Any) -> Any:
        return await execute_plainly(*args, **kwargs)

    for accept in (None, MODERN):
        fast = []
        monkeypatch.setattr(schema.http, "execute_root_field", spy)
        for client, query, variables in cases:
            fast.append(await _post(client, query, variables, accept))
        assert len(taken) == len(cases)
        taken.clear()
        slow = []
        monkeypatch.setattr(schema.http, "execute_root_field", executor_only)
        for client, query, variables in cases:
            slow.append(await _post(client, query, variables, accept))
        monkeypatch.undo()
        for (_, query, variables), one, other in zip(cases, fast, slow, strict=True):
            assert one == other, (query, variables)
    # What an operation is gets worked out once, and lives with the cached document.
    prepared = server.app.state.chat.documents.prepare(SEND)
    assert [type(root) for root in prepared.roots.values()] == [RootField]
    codes = {error["extensions"]["code"] for _, _, body in fast for error in body.get("errors", [])}
    assert codes == {
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "BAD_USER_INPUT",
        "GRAPHQL_VALIDATION_FAILED",
    }


# --- the fall-backs, on a schema of their own --------------------------------------------------

calls: list[str] = []


@strawberry.type
class Thing:
    name: str
    size: int


@strawberry.type
class Query:
    @strawberry.field
    def thing(self, name: str = "x") -> Thing:
        calls.append("thing")
        # A null name, or a size past 32 bits: values the plan refuses.
        return Thing(name=None if name == "null" else name, size=2**40 if name == "big" else 1)  # type: ignore[arg-type]

    @strawberry.field
    def maybe(self) -> Thing | None:
        calls.append("maybe")
        raise ValueError("not here")

    @strawberry.field
    async def later(self) -> Thing:
        calls.append("later")
        return Thing(name="later", size=2)


@strawberry.input
class Size:
    value: int


@strawberry.type
class Echo:
    text: str | None
    times: int
    viewer: str


@strawberry.type
class Mutation:
    @strawberry.mutation
    def echo(
        self, info: strawberry.Info, some_text: str | None = strawberry.UNSET, times: int = 2
    ) -> Echo:
        calls.append("echo")
        text = None if some_text is strawberry.UNSET else some_text
        return Echo(text=text, times=times, viewer=info.field_name)

    @strawberry.mutation
    def resize(self, size: Size) -> Thing:
        calls.append("resize")
        return Thing(name="resized", size=size.value)

    @strawberry.mutation
    def touch(self, size: int) -> Thing:
        calls.append("touch")
        if size < 0:
            raise GraphQLError("negative")
        return Thing(name="touched", size=size)


SMALL = strawberry.Schema(query=Query, mutation=Mutation)._schema

SMALL_DOCUMENTS: list[tuple[str, dict[str, Any] | None]] = [
    ("{ thing { name size } }", None),
    ('{ t: thing(name: "y") { size name __typename } }', None),
    ('{ thing(name: "null") { name } }', None),
    ('{ thing(name: "big") { size } }', None),
    ("{ maybe { name } }", None),
    ("{ later { name } }", None),
    ("mutation ($s: Int!) { touch(size: $s) { size } }", {"s": 3}),
    ("mutation ($s: Int!) { touch(size: $s) { size } }", {"s": -1}),
    ("mutation ($s: Int!) { touch(size: $s) { size } }", {"s": "three"}),
    ("mutation ($s: Int!) { touch(size: $s) { size } }", {}),
    ("mutation { echo { text times viewer } }", None),
    ("mutation ($t: String) { echo(someText: $t, times: 3) { text times } }", {"t": "hi"}),
    ("mutation ($t: String) { echo(someText: $t) { text } }", {"t": None}),
    ("mutation { resize(size: {value: 4}) { name size } }", None),
]


def _formatted(result: Any) -> tuple[Any, Any]:
    """Data and errors as the client gets them (an internal error's id is new each time)."""
    if result.errors:
        format_errors(result.errors)
    errors = [error.formatted for error in result.errors or []]
    for error in errors:
        if "correlationId" in error["extensions"]:
            error["extensions"]["correlationId"] = "..."
    return result.data, errors


@pytest.mark.parametrize(("source", "variables"), SMALL_DOCUMENTS)
async def test_a_root_field_gives_what_the_executor_gives_and_runs_its_resolver_once(
    source: str, variables: dict[str, Any] | None
) -> None:
    document = parse(source)
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    root = root_field(Plans(), SMALL, document, operation)
    assert root is not None
    options: dict[str, Any] = {"context": None, "variables": variables, "operation_name": None}
    calls.clear()
    fast = await execute_root_field(root, SMALL, document, **options)
    fast_calls, calls[:] = list(calls), []
    slow = await execute_plainly(SMALL, document, **options)
    assert fast_calls == calls
    assert _formatted(fast) == _formatted(slow)


@pytest.mark.parametrize(
    "source",
    [
        "{ thing { name } later { name } }",  # two root fields
        "{ thing { ...F } } fragment F on Thing { name }",
        "{ thing @include(if: true) { name } }",
        "{ __typename }",
        "subscription { x }",
    ],
)
def test_anything_else_is_left_to_the_executor(source: str) -> None:
    document = parse(source, no_location=True)
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    assert root_field(Plans(), SMALL, document, operation) is None


def test_strawberrys_resolver_wrapper_is_skipped_only_for_scalar_arguments() -> None:
    mutations = SMALL.mutation_type
    assert mutations is not None
    assert _direct(mutations.fields["echo"], SMALL) is not None
    assert _direct(mutations.fields["resize"], SMALL) is None  # an input object to build


VARIABLES_DOCUMENT = """
mutation ($s: Int!, $t: String, $n: [Int], $d: Int = 4) { touch(size: $s) { size } }
"""


@pytest.mark.parametrize(
    "inputs",
    [
        {"s": 1},
        {"s": 1, "t": "x", "extra": True},
        {"s": 1, "t": None},
        {"s": "one"},
        {},
        {"s": None},
        {"s": 1, "n": [1, 2]},
    ],
)
def test_variables_are_coerced_as_graphql_core_coerces_them(inputs: dict[str, Any]) -> None:
    for source in (VARIABLES_DOCUMENT, VARIABLES_DOCUMENT.replace(", $d: Int = 4", "")):
        document = parse(source)
        operation = document.definitions[0]
        assert isinstance(operation, OperationDefinitionNode)
        root = root_field(Plans(), SMALL, document, operation)
        assert root is not None
        coerced = root.coerce(inputs)
        expected = get_variable_values(SMALL, operation.variable_definitions or (), inputs)
        if coerced is not None:
            # Only plain success is coerced here: everything else goes to graphql-core.
            assert "$d" not in source
            # (Wrapping types such as Int! are made anew for each signature: compare by repr.)
            assert repr(coerced) == repr(expected)
        else:
            assert "$d" in source or isinstance(expected, list) or "n" in inputs


ARGUMENT_DOCUMENTS = [
    "mutation ($t: String, $n: Int!) { echo(someText: $t, times: $n) { text times } }",
    "mutation ($t: String) { echo(someText: $t) { text times } }",  # times: its default
    "mutation { echo { text times } }",
    'mutation ($n: Int!) { echo(someText: "literal", times: $n) { text } }',
    "mutation ($s: Int) { touch(size: $s) { size } }",  # a nullable variable, non-null argument
]


@pytest.mark.parametrize("source", ARGUMENT_DOCUMENTS)
@pytest.mark.parametrize("inputs", [{"t": "x", "n": 3, "s": 1}, {"t": None, "n": 0}, {"s": None}])
def test_arguments_are_what_graphql_core_gives_or_left_to_it(
    source: str, inputs: dict[str, Any]
) -> None:
    document = parse(source)
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    root = root_field(Plans(), SMALL, document, operation)
    assert root is not None
    used = {name: value for name, value in inputs.items() if f"${name}" in source}
    variables = get_variable_values(SMALL, operation.variable_definitions or (), used)
    if isinstance(variables, list):
        return  # refused before any argument is read
    fast = root.argument_values(variables)
    try:
        expected: Any = get_argument_values(root.field, root.node, variables)
    except GraphQLError:
        expected = None
    if "literal" in source:
        assert fast is None  # literals are graphql-core's
    elif fast is None:
        # Only what graphql-core refuses is handed back to it.
        assert expected is None
    else:
        assert fast == expected
        assert type(next(iter(fast.values()), None)) is type(next(iter(expected.values()), None))
