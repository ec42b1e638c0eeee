"""Bad HTTP bodies get a 400 with a GraphQL-shaped error: never a 500, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support import ME, GraphQLClient

DEEP = 1_001  # past the 1,000 levels the issue names (and below orjson's own 1,024 cap)
VERY_DEEP = 20_000  # within the 64 KiB body limit

BODIES = {
    "null": b"null",
    "string": b'"x"',
    "list": b"[]",
    "number": b"1",
    "true": b"true",
    "empty": b"",
    "invalid UTF-8": b'{"query": "{ me { id } }", "x": "\xff\xfe"}',
    "invalid UTF-8 in the query": b'{"query": "{ me { id \xc3\x28 } }"}',
    "truncated": b'{"query": "{ me { id } }"',
    "query not a string": b'{"query": 1}',
    "variables a list": b'{"query": "{ me { id } }", "variables": []}',
    "body nested 1,001 deep": b'{"query": "{ me { id } }", "extensions": {"x": '
    + b"[" * DEEP
    + b"]" * DEEP
    + b"}}",
    "body nested 20,000 deep": b"[" * VERY_DEEP + b"]" * VERY_DEEP,
    "variables nested 1,001 deep": b'{"query": "{ me { id } }", "variables": {"x": '
    + b"[" * DEEP
    + b"]" * DEEP
    + b"}}",
    "variables nested 20,000 deep": b'{"query": "{ me { id } }", "variables": {"x": '
    + b"[" * VERY_DEEP
    + b"]" * VERY_DEEP
    + b"}}",
    "variable value nested 1,001 deep": (
        b'{"query": "query ($n: String!) { user(name: $n) { id } }", "variables": {"n": '
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}}"
    ),
}


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record the in-process server logs, uvicorn's own loggers included (they do not
    propagate to the root logger that caplog listens on)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi")]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("media", ["application/json", "application/graphql-response+json"])
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_a_body_that_is_not_a_graphql_request_gets_400_with_a_graphql_error(
    client: GraphQLClient, server_log: pytest.LogCaptureFixture, body: bytes, media: str
) -> None:
    response = await client.http.post(
        "/graphql",
        content=body,
        headers={"Content-Type": "application/json", "Accept": media},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == media
    payload = response.json()
    [error] = payload["errors"]
    assert error["message"]
    assert error["extensions"]["code"] in ("BAD_REQUEST", "GRAPHQL_VALIDATION_FAILED")
    if media == "application/graphql-response+json":
        assert "data" not in payload
    # Nothing went wrong inside the server: no error logged, no traceback.
    assert [r for r in server_log.records if r.levelno >= logging.ERROR or r.exc_info] == []
    # And it still serves.
    assert (await client.post(ME)) == {"data": {"me": None}}
