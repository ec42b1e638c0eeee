"""Introspection: the standard query that GraphiQL, Apollo and codegen send works; anything
deeper is refused (its result would grow geometrically with each level)."""

from __future__ import annotations

import pytest
from graphql import get_introspection_query

from schema.introspection import standard_introspection_depth
from tests.support import GraphQLClient, GraphQLWebSocket, RunningServer

# getIntrospectionQuery with every option on: graphql-js 17 / graphql-core nest ofType 9
# deep, graphql-js 16 (GraphiQL 3, Apollo, codegen today) 7.
STANDARD = {
    f"type depth {depth}": get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
        one_of=True,
        type_depth=depth,
    )
    for depth in (7, 9)
}


def nested_lists_query(levels: int) -> str:
    """`{ __schema { types { fields { type { fields { type { ... name } } } } } } }`: each level
    multiplies the result (graphql-core's own MaxIntrospectionDepthRule refuses it)."""
    return (
        "{ __schema { types { " + "fields { type { " * levels + "name" + " } }" * levels + " } } }"
    )


def of_type_query(depth: int) -> str:
    """`{ __schema { types { fields { type { ofType { ofType { ... name } } } } } } }`, `depth`
    fields deep: no list repeats, so only a depth limit bounds it."""
    chain = depth - 5  # __schema, types, fields, type ... name
    return (
        "{ __schema { types { fields { type { "
        + "ofType { " * chain
        + "name"
        + " }" * chain
        + " } } } } }"
    )


def of_type_by_type_query(depth: int) -> str:
    chain = depth - 2  # __type ... name
    return '{ __type(name: "Query") { ' + "ofType { " * chain + "name" + " }" * chain + " } }"


OF_TYPE_BY_FRAGMENTS = """
{ ...Root }
fragment Root on Query { __schema { types { ...Deeper } } }
fragment Deeper on __Type { ofType { ofType { ofType { ofType { ofType { ...Deepest } } } } } }
fragment Deepest on __Type { ofType { ofType { ofType { ofType { ofType { ofType { ofType {
  ofType { ofType { ofType { name } } } } } } } } } } }
"""


@pytest.mark.parametrize("query", STANDARD.values(), ids=STANDARD.keys())
async def test_the_standard_introspection_query_works(client: GraphQLClient, query: str) -> None:
    data = await client.data(query)
    names = {entry["name"] for entry in data["__schema"]["types"]}
    assert {"Query", "Mutation", "Subscription", "Message", "Room"} <= names


async def test_introspection_that_multiplies_with_each_level_is_refused(
    client: GraphQLClient,
) -> None:
    body = await client.post(nested_lists_query(20))
    assert body["data"] is None
    assert body["errors"]
    assert {error["extensions"]["code"] for error in body["errors"]} == {
        "GRAPHQL_VALIDATION_FAILED"
    }


@pytest.mark.parametrize(
    "query",
    [of_type_query(16), of_type_query(40), of_type_by_type_query(20), OF_TYPE_BY_FRAGMENTS],
    ids=["one level too deep", "40 deep", "__type 20 deep", "by fragments"],
)
async def test_introspection_deeper_than_the_standard_query_is_refused(
    client: GraphQLClient, query: str
) -> None:
    assert standard_introspection_depth() == 15
    body = await client.post(query)
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "needs 15" in error["message"]


async def test_introspection_as_deep_as_the_standard_query_is_answered(
    client: GraphQLClient,
) -> None:
    data = await client.data(of_type_query(standard_introspection_depth()))
    assert data["__schema"]["types"]


async def test_deep_introspection_is_refused_over_websocket_too(
    server: RunningServer, client: GraphQLClient
) -> None:
    await client.sign_up()
    async with GraphQLWebSocket.connect(server.ws_url, cookie=client.session_cookie) as socket:
        operation = await socket.subscribe(of_type_query(40))
        message = await operation.next_message()
    assert message["type"] == "error", message
    assert message["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
