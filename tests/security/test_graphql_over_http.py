"""GraphQL over HTTP (the spec graphql-http audits): `application/graphql-response+json` on
Accept and in the response, 400 without `data` when the request never ran."""

from __future__ import annotations

import pytest

from tests.support import GraphQLClient

MODERN = "application/graphql-response+json"

NEVER_RAN = {
    "parse error": ({"query": "{ me { id "}, "Syntax Error"),
    "validation error": ({"query": "{ nope }"}, "Cannot query field 'nope'"),
    "variable coercion": (
        {"query": "query ($n: String!) { user(name: $n) { id } }", "variables": {"n": 1}},
        "String cannot represent a non string value",
    ),
    "missing variable": (
        {"query": "query ($n: String!) { user(name: $n) { id } }"},
        "Expected a value of non-null type 'String!' to be provided",
    ),
}


@pytest.mark.parametrize(("body", "message"), NEVER_RAN.values(), ids=NEVER_RAN.keys())
async def test_a_request_that_never_ran_is_400_without_data_under_the_graphql_response_type(
    client: GraphQLClient, body: dict[str, object], message: str
) -> None:
    response = await client.http.post("/graphql", json=body, headers={"Accept": MODERN})
    assert response.status_code == 400
    assert response.headers["content-type"] == MODERN
    payload = response.json()
    assert "data" not in payload
    assert message in payload["errors"][0]["message"]
    assert payload["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


@pytest.mark.parametrize(("body", "message"), NEVER_RAN.values(), ids=NEVER_RAN.keys())
async def test_under_application_json_the_same_request_is_200_with_null_data(
    client: GraphQLClient, body: dict[str, object], message: str
) -> None:
    response = await client.http.post("/graphql", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["data"] is None


async def test_a_request_that_ran_is_200_under_the_graphql_response_type(
    client: GraphQLClient,
) -> None:
    response = await client.http.post(
        "/graphql",
        json={"query": "{ me { id } }"},
        headers={"Accept": f"{MODERN}, application/json;q=0.9", "Content-Type": MODERN},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == MODERN
    assert response.json() == {"data": {"me": None}}
