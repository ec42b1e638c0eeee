"""Fixtures of the chat tests: signed-in browsers and a direct room between two of them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest

from tests.support import GraphQLClient, RunningServer

# The suite runs on PostgreSQL when TEST_DATABASE_URL is set (see tests/conftest.py).
ON_POSTGRES = bool(os.environ.get("TEST_DATABASE_URL"))

DIRECT_ROOM_ID = "query DirectRoomId($with: String!) { directRoom(with: $with) { id } }"

HISTORY_LENGTH = 230
SEED_BATCH = 25  # aliases per document, under the max_aliases guard (30 by default)

SignUp = Callable[..., Awaitable[GraphQLClient]]


@dataclass(frozen=True)
class Pair:
    """Two signed-up users and the id of their direct room (no messages yet)."""

    alice: GraphQLClient
    bob: GraphQLClient
    room_id: str

    @property
    def alice_user(self) -> dict[str, Any]:
        assert self.alice.user is not None
        return self.alice.user

    @property
    def bob_user(self) -> dict[str, Any]:
        assert self.bob.user is not None
        return self.bob.user


def name_of(client: GraphQLClient) -> str:
    """The name of the user signed in on a browser."""
    assert client.user is not None
    name: str = client.user["name"]
    return name


def id_of(client: GraphQLClient) -> str:
    """The id of the user signed in on a browser."""
    assert client.user is not None
    user_id: str = client.user["id"]
    return user_id


async def post_raw(client: GraphQLClient, body: str) -> dict[str, Any]:
    """POST a JSON body exactly as written, so escapes like \\ud800 reach the server unchanged."""
    response = await client.http.post(
        "/graphql", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


@pytest.fixture
def sign_up(make_client: object) -> SignUp:
    """A factory of fresh browsers, each signed up as a new user (or the given name)."""
    new_client = cast(Callable[[], GraphQLClient], make_client)

    async def sign_up(name: str | None = None) -> GraphQLClient:
        client = new_client()
        await client.sign_up(name)
        return client

    return sign_up


@pytest.fixture
def sign_in(make_client: object) -> Callable[[str], Awaitable[GraphQLClient]]:
    """A factory of further devices (browsers) of an existing user."""
    new_client = cast(Callable[[], GraphQLClient], make_client)

    async def sign_in(name: str) -> GraphQLClient:
        client = new_client()
        await client.sign_in(name)
        return client

    return sign_in


@pytest.fixture
async def pair(sign_up: SignUp) -> Pair:
    """Alice and Bob, fresh users, and their direct room."""
    alice = await sign_up()
    bob = await sign_up()
    assert bob.user is not None
    data = await alice.data(DIRECT_ROOM_ID, {"with": bob.user["name"]})
    return Pair(alice=alice, bob=bob, room_id=data["directRoom"]["id"])


@dataclass(frozen=True)
class History:
    """A direct room with HISTORY_LENGTH messages: seq n has data "m<n>"."""

    pair: Pair
    length: int

    @property
    def room_id(self) -> str:
        return self.pair.room_id


def _send_batch_document(count: int) -> str:
    # Mutation fields run one after another, so aliases get consecutive seqs in order.
    fields = "\n".join(
        f"  m{n}: sendMessage(roomId: $roomId, data: $d{n}) {{ seq }}" for n in range(count)
    )
    variables = ", ".join(f"$d{n}: String!" for n in range(count))
    return f"mutation SeedHistory($roomId: ID!, {variables}) {{\n{fields}\n}}"


async def send_numbered_messages(senders: list[GraphQLClient], room_id: str, count: int) -> None:
    """Into an empty room, send "m1", "m2", ... in batches, taking turns between the senders."""
    sent = 0
    while sent < count:
        size = min(SEED_BATCH, count - sent)
        sender = senders[(sent // SEED_BATCH) % len(senders)]
        variables: dict[str, Any] = {"roomId": room_id}
        variables.update({f"d{n}": f"m{sent + n + 1}" for n in range(size)})
        data = await sender.data(_send_batch_document(size), variables)
        assert [data[f"m{n}"]["seq"] for n in range(size)] == [sent + n + 1 for n in range(size)]
        sent += size


@pytest.fixture(scope="session")
async def long_history(server: RunningServer) -> AsyncIterator[History]:
    """One room with a long history, shared by tests that only read it."""
    alice, bob = GraphQLClient(server.url), GraphQLClient(server.url)
    try:
        await alice.sign_up()
        await bob.sign_up()
        assert bob.user is not None
        data = await alice.data(DIRECT_ROOM_ID, {"with": bob.user["name"]})
        room_id = data["directRoom"]["id"]
        await send_numbered_messages([alice, bob], room_id, HISTORY_LENGTH)
        yield History(pair=Pair(alice=alice, bob=bob, room_id=room_id), length=HISTORY_LENGTH)
    finally:
        await alice.aclose()
        await bob.aclose()
