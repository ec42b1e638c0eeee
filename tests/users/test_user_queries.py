"""me and user(name): who is signed in, and looking people up by name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import GraphQLClient, unique_name
from tests.users.helpers import error_code, exchange

ME = "query { me { id name createdAt } }"
USER = "query User($name: String!) { user(name: $name) { id name createdAt } }"


async def test_me_without_a_session_is_null(client: GraphQLClient) -> None:
    body = await client.post(ME)
    assert body == {"data": {"me": None}}


async def test_me_is_the_signed_in_user(client: GraphQLClient) -> None:
    user = await client.sign_up()
    assert (await client.data(ME))["me"] == user


async def test_user_by_name_finds_the_account_case_and_width_insensitively(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name("bob")
    bob = await make_client().sign_up(name)
    viewer = make_client()
    await viewer.sign_up()
    width = "".join(chr(ord(ch) + 0xFEE0) for ch in name)
    for spelling in (name, name.upper(), width):
        found = (await viewer.data(USER, {"name": spelling}))["user"]
        assert found == bob, spelling


async def test_user_by_unknown_name_is_null(client: GraphQLClient) -> None:
    await client.sign_up()
    for name in (unique_name(), "x", "y" * 500):
        assert (await client.data(USER, {"name": name})) == {"user": None}


async def test_user_by_name_without_a_session_is_unauthenticated(
    make_client: Callable[[], GraphQLClient],
) -> None:
    name = unique_name()
    await make_client().sign_up(name)
    _, body = await exchange(make_client().http, USER, {"name": name})
    assert error_code(body) == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "bad_name",
    [
        # PostgreSQL text cannot hold NUL; UTF-8 cannot encode a lone surrogate.
        pytest.param("nul\u0000name", id="nul"),
        pytest.param("lone\ud800surrogate", id="lone-surrogate"),
    ],
)
async def test_user_by_a_name_no_account_can_have_is_null(
    client: GraphQLClient, bad_name: str
) -> None:
    await client.sign_up()
    _, body = await exchange(client.http, USER, {"name": bad_name})
    assert body == {"data": {"user": None}}
